"""CPU per authorization-code exchange, in process, and where it goes (cProfile).

The same seeded codes the load generator presents, exchanged one at a time through the
app's WSGI interface (no HTTP server, one thread), so the figure is the provider's own
work per exchange: Flask, Authlib, the statements and the signatures.

    .venv/bin/python bench/profile_exchange.py
    .venv/bin/python bench/profile_exchange.py --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import base64
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import bench_env, free_port, prepare  # noqa: E402


@click.command()
@click.option("--database-url", default=None, help="PostgreSQL to wipe and use (default: SQLite).")
@click.option("--codes", default=3000, show_default=True, help="Exchanges measured.")
@click.option("--top", default=25, show_default=True, help="Profile lines printed.")
@click.option("--sort", default="cumulative", show_default=True, help="cProfile sort key.")
def main(database_url: str | None, codes: int, top: int, sort: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="idp-profile-"))
    try:
        env = bench_env(workdir, database_url, free_port())
        seeded = prepare(env, 1000, codes + 200, workdir, reset_pg=True)
        from idp import create_app

        app = create_app()
        client = app.test_client()
        auth = base64.b64encode(f"{seeded['client_id']}:{seeded['client_secret']}".encode())
        headers = {"Authorization": f"Basic {auth.decode()}"}
        values = (workdir / "codes.txt").read_text().split()

        def exchange(code: str) -> None:
            response = client.post("/oauth/token", headers=headers, data={
                "grant_type": "authorization_code", "code": code,
                "redirect_uri": seeded["redirect_uri"]})
            if response.status_code != 200:
                raise click.ClickException(f"{response.status_code}: {response.get_data(True)}")

        for code in values[:200]:  # warm: caches, statements, keys
            exchange(code)
        measured = values[200:200 + codes]
        quarters = [measured[i::4] for i in range(4)]
        per = []
        for quarter in quarters[:3]:
            started = time.process_time()
            for code in quarter:
                exchange(code)
            per.append((time.process_time() - started) / len(quarter) * 1000)
        profiler = cProfile.Profile()
        profiler.enable()
        for code in quarters[3]:
            exchange(code)
        profiler.disable()
        click.echo(f"CPU per exchange (ms, three quarters of {codes}): "
                   + ", ".join(f"{ms:.2f}" for ms in per))
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
        click.echo(out.getvalue())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
