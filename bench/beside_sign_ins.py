"""Token traffic while sign-ins run at full rate: introspection, then the refresh grant,
each for 8 s alone, then beside 4 clients signing in as fast as they are answered, then
alone again (`idp serve` defaults, SQLite in a fresh folder, tokens minted through the
front door; refresh goes on from each rotated token).

    .venv/bin/python bench/beside_sign_ins.py [--set IDP_ARGON2_CONCURRENCY=2]
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import LUA, wrk  # noqa: E402
from bench.side_by_side import load_env, mint, start_ours, stop  # noqa: E402


def sign_ins(base: str, email: str, password: str, done: threading.Event, out: list) -> None:
    with httpx.Client(base_url=base, timeout=60) as browser:
        while not done.is_set():
            browser.cookies.clear()
            page = browser.get("/login")
            token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                              page.text).group(1)
            started = time.monotonic()
            answer = browser.post("/login", data={"csrf_token": token, "email": email,
                                                  "password": password})
            out.append((answer.status_code, time.monotonic() - started))


@click.command()
@click.option("--clients", default=4, show_default=True, type=int)
@click.option("--duration", default=8, show_default=True, type=int)
@click.option("--set", "settings", multiple=True, metavar="IDP_NAME=VALUE")
def main(clients, duration, settings):
    workdir = Path(tempfile.mkdtemp())
    ours = start_ours(workdir, None, settings)
    offsets: dict = {}
    try:
        mint(ours, workdir, "tokens", 400)
        for (load, script, data), (phase, count) in (
                (load, phase) for load in (("introspection", "introspect.lua", "access_tokens"),
                                           ("token", "refresh.lua", "refresh_tokens"))
                for phase in (("alone", 0), (f"beside {clients} sign-ins", clients),
                              ("alone again", 0))):
            done, out = threading.Event(), []
            threads = [threading.Thread(target=sign_ins, args=(
                ours.base, ours.demo["user"], ours.demo["password"], done, out))
                for _ in range(count)]
            for thread in threads:
                thread.start()
            time.sleep(1 if threads else 0)
            stats = wrk(ours.base + ours.paths[load], LUA / script,
                        load_env(ours, load, data, offsets.get(load, 0)), duration, 16, 2)
            offsets[load] = max(offsets.get(load, 0), stats.get("cursor", 0))
            done.set()
            for thread in threads:
                thread.join()
            ok = [seconds for status, seconds in out if status == 303]
            name = "introspection" if load == "introspection" else "refresh"
            line = (f"{name:13} {phase:20} {stats['rps']:7.0f} req/s, p99 "
                    f"{stats['p99_ms']:6.1f} ms, errors {stats['errors']}")
            if count:
                line += (f"; sign-ins {len(ok)} of {len(out)} ({len(ok) / (duration + 1):.1f}/s), "
                         f"p50 {statistics.median(ok):.2f} s")
            print(line, flush=True)
    finally:
        stop(ours)


if __name__ == "__main__":
    main()
