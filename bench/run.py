"""One command: start the provider under its production server, seed data at a
chosen scale, run a bounded wrk load against each hot endpoint, print one table.

    .venv/bin/python bench/run.py [--database-url URL] [--sessions 1000] [--workers 2]
                                  [--server gthread|sync|granian] [--duration 10]

Results also go to bench/results/<timestamp>.json (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import httpx

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).resolve().parent / "lua"
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_env(workdir: Path, database_url: str | None, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update({
        "IDP_INSTANCE_DIR": str(workdir / "instance"),
        "IDP_KEYS_DIR": str(workdir / "keys"),
        "IDP_ISSUER": f"http://127.0.0.1:{port}",
        "IDP_ACCESS_LOG": "0",
        "IDP_LOGIN_IP_LIMIT": "100000 per minute",
        "IDP_LOGIN_MAX_FAILURES": "100",
        "IDP_TOKEN_RATE_LIMIT": "10000000 per minute",
        "IDP_INTROSPECTION_RATE_LIMIT": "10000000 per minute",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
    })
    if database_url:
        env["IDP_DATABASE_URL"] = database_url
    (workdir / "prometheus").mkdir(parents=True, exist_ok=True)
    return env


def prepare(env: dict, sessions: int, fresh: int, out: Path, reset_pg: bool) -> dict:
    """Migrate and seed in this process (imports happen after the env is set)."""
    os.environ.update(env)
    from flask_migrate import upgrade

    sys.path.insert(0, str(ROOT))
    from bench.seed import seed
    from idp import MIGRATIONS_DIR, create_app
    from idp.models import db

    app = create_app()
    with app.app_context():
        if reset_pg and env.get("IDP_DATABASE_URL", "").startswith("postgresql"):
            import sqlalchemy as sa

            with db.engine.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA public CASCADE"))
                conn.execute(sa.text("CREATE SCHEMA public"))
        upgrade(directory=MIGRATIONS_DIR)
        started = time.monotonic()
        seeded = seed(app, sessions, fresh, out)
        click.echo(f"seeded {sessions} sessions + {fresh} fresh credentials in "
                   f"{time.monotonic() - started:.1f} s", err=True)
        db.engine.dispose()
    return seeded.__dict__


def start_server(server: str, env: dict, port: int, workers: int) -> subprocess.Popen:
    venv_bin = Path(sys.executable).parent
    if server == "granian":
        cmd = [str(venv_bin / "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--blocking-threads", "4",
               "--no-ws", "--log-level", "warning", "app:app"]
    else:
        cmd = [str(venv_bin / "gunicorn"), "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--worker-class", server,
               "--threads", "4" if server == "gthread" else "1",
               "--log-level", "warning", "app:app"]
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit(f"server did not start: {process.stderr.read().decode()[-2000:]}")


def stop_server(process: subprocess.Popen) -> dict:
    """Stop the server; report each worker's RSS first (MB)."""
    rss = []
    try:
        children = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True,
                                  text=True, timeout=5).stdout.split()
        for pid in children:
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"VmRSS:\s+(\d+) kB", status)
            if match:
                rss.append(int(match.group(1)) / 1024)
    except (OSError, subprocess.SubprocessError):
        pass
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    return {"rss_mb": sorted(rss, reverse=True)}


def wrk(url: str, script: Path, env: dict, duration: int, connections: int, threads: int) -> dict:
    """Run wrk under /usr/bin/time to know its own CPU share."""
    cmd = ["/usr/bin/time", "-f", "TIME %U %S %e", "wrk", "-t", str(threads),
           "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s", "-s", str(script), url]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env,
                            timeout=duration + 60)
    out = result.stdout + result.stderr
    found = re.search(r"^JSON (.*)$", out, re.M)
    if found is None:
        raise SystemExit(f"wrk failed for {url}:\n{out[-1500:]}")
    stats = json.loads(found.group(1))
    user, system, elapsed = map(float, re.search(r"TIME (\S+) (\S+) (\S+)", out).groups())
    stats["wrk_cpu_pct"] = round(100 * (user + system) / max(elapsed, 0.001), 1)
    return stats


ENDPOINTS = [
    # name, lua script, path, data file
    ("reference: /healthz (no DB, no crypto)", "get.lua", "/healthz", None),
    ("discovery", "get.lua", "/.well-known/openid-configuration", None),
    ("jwks", "get.lua", "/.well-known/jwks.json", None),
    ("introspect: active access token", "introspect.lua", "/oauth/introspect", "access_tokens.txt"),
    ("introspect: active refresh token", "introspect.lua", "/oauth/introspect",
     "active_refresh_tokens.txt"),
    ("introspect: inactive token", "introspect.lua", "/oauth/introspect", "inactive_tokens.txt"),
    ("userinfo", "bearer.lua", "/userinfo", "access_tokens.txt"),
    ("GET /api/v1/sessions", "bearer.lua", "/api/v1/sessions?limit=25", "access_tokens.txt"),
    ("refresh_token grant", "refresh.lua", "/oauth/token", "refresh_tokens.txt"),
    ("authorization_code exchange", "code.lua", "/oauth/token", "codes.txt"),
    ("client_credentials grant", "client_credentials.lua", "/oauth/token", None),
    ("login (argon2id)", "login.lua", "/login", None),
]


@click.command()
@click.option("--database-url", help="Default: a fresh SQLite file in the run folder.")
@click.option("--sessions", default=1000, show_default=True, type=int)
@click.option("--fresh", default=20000, show_default=True, type=int,
              help="Refresh tokens and codes seeded for the load (one per request).")
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--server", type=click.Choice(["gthread", "sync", "granian"]), default="gthread",
              show_default=True)
@click.option("--duration", default=10, show_default=True, type=int, help="Seconds per endpoint.")
@click.option("--connections", default=16, show_default=True, type=int)
@click.option("--only", help="Comma-separated substrings of endpoint names to run.")
@click.option("--reset-db/--keep-db", default=True, help="Wipe a PostgreSQL database first.")
def main(database_url, sessions, fresh, workers, server, duration, connections, only, reset_db):
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="idp-bench-"))
    port = free_port()
    env = bench_env(workdir, database_url, port)
    seeded = prepare(env, sessions, fresh, workdir, reset_db)
    login_cookie, login_csrf = None, None
    process = start_server(server, env, port, workers)
    base = f"http://127.0.0.1:{port}"
    try:
        page = httpx.get(f"{base}/login")
        login_csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                               page.text).group(1)
        login_cookie = "; ".join(f"{k}={v}" for k, v in page.cookies.items())
        rows = []
        for name, script, path, data in ENDPOINTS:
            if only and not any(part in name for part in only.split(",")):
                continue
            wrk_env = {**os.environ, "BENCH_PATH": path, "BENCH_LUA_DIR": str(LUA),
                       "BENCH_DATA": str(workdir / data) if data else "",
                       "BENCH_CLIENT_ID": seeded["client_id"],
                       "BENCH_CLIENT_SECRET": seeded["client_secret"],
                       "BENCH_REDIRECT_URI": seeded["redirect_uri"],
                       "BENCH_EMAIL": seeded["emails"][0],
                       "BENCH_PASSWORD": "bench password 123",
                       "BENCH_CSRF": login_csrf, "BENCH_COOKIE": login_cookie}
            stats = wrk(base + path, LUA / script, wrk_env, duration, connections, 2)
            stats["endpoint"] = name
            rows.append(stats)
            click.echo(f"{name:42} {stats['rps']:8.0f} req/s  p50 {stats['p50_ms']:6.2f} ms  "
                       f"p99 {stats['p99_ms']:7.2f} ms  errors {stats['errors']}", err=True)
    finally:
        memory = stop_server(process)
    reference = rows[0]["rps"] if rows and rows[0]["endpoint"].startswith("reference") else None
    header = (f"{'endpoint':42} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'p99 ms':>7} {'errors':>7} {'wrk cpu':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = f"{row['rps'] / reference:.2f}" if reference else "-"
        row["ratio"] = float(ratio) if reference else None
        lines.append(f"{row['endpoint']:42} {row['rps']:8.0f} {ratio:>6} {row['p50_ms']:7.2f} "
                     f"{row['p95_ms']:7.2f} {row['p99_ms']:7.2f} {row['errors']:7d} "
                     f"{row['wrk_cpu_pct']:6.1f}%")
    db_kind = "postgresql" if (database_url or "").startswith("postgresql") else "sqlite"
    summary = (f"server={server} workers={workers} connections={connections} duration={duration}s "
               f"db={db_kind} sessions={sessions} worker RSS MB={memory['rss_mb']}")
    print(summary)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"when": stamp, "server": server, "workers": workers, "connections": connections,
              "duration": duration, "database": db_kind, "sessions": sessions,
              "memory": memory, "rows": rows, "machine": os.uname().nodename,
              "cpus": os.cpu_count()}
    path = RESULTS / f"{stamp}-{db_kind}-{sessions}-{server}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
