"""One command: seed data at a chosen scale, start the provider under its production
server, run a bounded wrk load against each hot endpoint, print one table.

    .venv/bin/python bench/run.py [--database-url URL] [--sessions 1000] [--workers 2]
                                  [--server gthread|sync|granian] [--duration 10]
                                  [--seed-only] [--reuse] [--stale 0.15]

Results also go to bench/results/<timestamp>.json (git-ignored).

Seeding is in bulk (COPY on PostgreSQL) with a progress bar: the history (``--sessions``
sessions in every state with their families, refresh tokens, codes, audit events and
logout deliveries), then ``--fresh`` credentials the load presents once each. The history
of a big run is worth keeping: seed it once, then reuse it for every later run (each run
still adds its own clients and fresh credentials, about 10 s):

    createdb -h 127.0.0.1 -U postgres idp_scale
    URL=postgresql+psycopg://postgres@127.0.0.1:5432/idp_scale
    # once: 1,000,000 sessions (about 3 minutes on the 2-core build machine)
    .venv/bin/python bench/run.py --database-url $URL --sessions 1000000 --seed-only
    # every run afterwards: skips the history when the database already holds it
    .venv/bin/python bench/run.py --database-url $URL --sessions 1000000 --reuse --duration 5
    # the small figure, on its own database (wiped and seeded each time)
    .venv/bin/python bench/run.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/idp_bench \
        --sessions 1000 --duration 5

``--reuse`` recognises a history by a marker account written when its seeding finished
(``bench-seeded-<sessions>-<stale>``); without it (or with another size) the database is
wiped (``--reset-db``, the default) and seeded again. Times in the history are relative to
when it was seeded: hours later its "active" sessions have gone idle, which changes what
``idp sweep`` finds but not the hot paths the load measures (fresh credentials are always new).

``--stale 1`` seeds a history in which every session is open and past a deadline: the
input of the sweep benchmark (``time .venv/bin/idp sweep --json`` with
``IDP_DATABASE_URL=$URL``; see bench/BASELINE.md).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
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


def bench_env(workdir: Path, database_url: str | None, port: int,
              redis_url: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update({
        "IDP_INSTANCE_DIR": str(workdir / "instance"),
        "IDP_KEYS_DIR": str(workdir / "keys"),
        "IDP_ISSUER": f"http://127.0.0.1:{port}",
        "IDP_ACCESS_LOG": "0",
        # Every limit at its default, but one: the sign-in row is one account signing in
        # from 16 connections at once, and at most IDP_LOGIN_MAX_FAILURES checks of one
        # account run at once (production spreads its sign-ins over many accounts).
        "IDP_LOGIN_MAX_FAILURES": "100",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
    })
    if database_url:
        env["IDP_DATABASE_URL"] = database_url
    if redis_url:
        env["IDP_REDIS_URL"] = redis_url
    (workdir / "prometheus").mkdir(parents=True, exist_ok=True)
    return env


def prepare(env: dict, sessions: int, fresh: int, out: Path, reset_pg: bool, *,
            reuse: bool = False, seed_only: bool = False, stale: float = 0.15) -> dict | None:
    """Migrate and seed in this process (imports happen after the env is set)."""
    os.environ.update(env)
    from flask_migrate import upgrade

    sys.path.insert(0, str(ROOT))
    from bench.seed import history_present, seed_fresh, seed_history
    from idp import MIGRATIONS_DIR, create_app
    from idp.models import db

    app = create_app()
    seeded = None
    with app.app_context():
        present = reuse and history_present(sessions, stale)
        if present:
            click.echo(f"reusing the {sessions}-session history already in the database", err=True)
        elif reset_pg and env.get("IDP_DATABASE_URL", "").startswith("postgresql"):
            import sqlalchemy as sa

            db.session.remove()
            with db.engine.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA public CASCADE"))
                conn.execute(sa.text("CREATE SCHEMA public"))
        upgrade(directory=MIGRATIONS_DIR)
        if not present:
            started = time.monotonic()
            counts = seed_history(app, sessions, stale=stale)
            click.echo(f"seeded {sessions} sessions in {time.monotonic() - started:.1f} s "
                       f"({', '.join(f'{k} {v}' for k, v in counts.items())})", err=True)
        if not seed_only:
            from bench.seed import _bar

            started = time.monotonic()
            with _bar(fresh, "Fresh credentials") as bar:
                seeded = seed_fresh(app, fresh, out, progress=bar.update).__dict__
            click.echo(f"seeded {fresh} fresh credentials in {time.monotonic() - started:.1f} s",
                       err=True)
        db.session.remove()
        db.engine.dispose()
    return seeded


def start_server(server: str, env: dict, port: int, workers: int, threads: int = 4
                 ) -> subprocess.Popen:
    venv_bin = Path(sys.executable).parent
    if server == "granian":
        cmd = [str(venv_bin / "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--blocking-threads", str(threads),
               "--no-ws", "--log-level", "warning", "app:app"]
    else:
        cmd = [str(venv_bin / "gunicorn"), "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--worker-class", server,
               "--threads", str(threads) if server == "gthread" else "1",
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
    """Stop the server; report each worker's RSS first (MB), once the requests still
    queued when the load stopped (slow sign-ins) have finished."""
    rss = []
    time.sleep(8)  # a queued argon2id sign-in takes up to ~5 s under the login load
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


SLICES = 4


def interleaved(base: str, path: str, script: Path, env: dict, duration: int,
                connections: int) -> dict:
    """One row as ``SLICES`` slices of the endpoint, each between two slices of the
    reference, all of ``duration / SLICES`` seconds. The build machine has spells of a few
    seconds at a fraction of its speed that hit every process alike: against one reference
    row measured minutes earlier a ratio moved by a factor of two with them. Here each
    slice's ratio is to the mean of the reference slices around it, and the row's ratio
    (like its p50/p95/p99) is the median over its slices. One-time credentials continue
    where the previous slice stopped (``BENCH_OFFSET``)."""
    each = max(1, round(duration / SLICES))
    reference_env = {**os.environ, "BENCH_LUA_DIR": str(LUA)}
    references = [wrk(f"{base}/healthz", LUA / "get.lua", reference_env, each, connections, 2)]
    parts, offset = [], 0
    for _ in range(SLICES):
        part = wrk(base + path, script, {**env, "BENCH_OFFSET": str(offset)}, each,
                   connections, 2)
        offset = max(offset, part.get("cursor", 0))
        parts.append(part)
        references.append(wrk(f"{base}/healthz", LUA / "get.lua", reference_env, each,
                              connections, 2))
    local = [(references[i]["rps"] + references[i + 1]["rps"]) / 2 for i in range(SLICES)]
    requests = sum(part["requests"] for part in parts)
    return {
        "requests": requests,
        "rps": round(requests / (each * SLICES), 1),
        "ratio": round(statistics.median(p["rps"] / r for p, r in zip(parts, local, strict=True)), 2),
        "reference_rps": round(statistics.median(local), 1),
        **{key: round(statistics.median(part[key] for part in parts), 3)
           for key in ("p50_ms", "p95_ms", "p99_ms")},
        "p99_ms_worst_slice": max(part["p99_ms"] for part in parts),
        "errors": sum(part["errors"] for part in parts),
        "status_errors": sum(part["status_errors"] for part in parts),
        "timeouts": sum(part["timeouts"] for part in parts),
        "wrk_cpu_pct": round(statistics.mean(part["wrk_cpu_pct"] for part in parts), 1),
        "slices": [{"rps": p["rps"], "reference_rps": r, "p99_ms": p["p99_ms"]}
                   for p, r in zip(parts, local, strict=True)],
    }


def ratios(rows: list[dict]) -> None:
    """The reference row's own ratio, and, for rows measured in one piece (sign-in), the
    ratio to the reference row."""
    reference = rows[0]["rps"] if rows and rows[0]["endpoint"].startswith("reference") else None
    for row in rows:
        if "ratio" not in row:
            row["ratio"] = round(row["rps"] / reference, 2) if reference else None
            row["reference_rps"] = reference or 0.0


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
    ("sessions page (HTML)", "cookie.lua", "/account/sessions", "session_cookies.txt"),
    ("refresh_token grant", "refresh.lua", "/oauth/token", "refresh_tokens.txt"),
    ("authorization_code exchange", "code.lua", "/oauth/token", "codes.txt"),
    ("client_credentials grant", "client_credentials.lua", "/oauth/token", None),
    ("login (argon2id)", "login.lua", "/login", None),
]


def _login_loop(base: str, seeded: dict, csrf: str, cookie: str, stop: threading.Event,
                samples: list, errors: list) -> None:
    """Sign in again and again (a different seeded user each time), recording latencies."""
    emails = seeded["emails"]
    with httpx.Client(timeout=30, follow_redirects=False) as http:
        n = 0
        while not stop.is_set():
            email = emails[n % len(emails)]
            n += 1
            started = time.monotonic()
            try:
                response = http.post(f"{base}/login", headers={"Cookie": cookie},
                                     data={"csrf_token": csrf, "email": email,
                                           "password": "bench password 123"})
                ok = response.status_code in (302, 303)
            except httpx.HTTPError:
                ok = False
            http.cookies.clear()
            (samples if ok else errors).append((started, time.monotonic() - started))


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"count": 0}
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"count": len(ordered), "p50_ms": pick(0.50), "p95_ms": pick(0.95),
            "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 1)}


def _lock_waits(url: str, stop: threading.Event, seen: list, what: dict) -> None:
    """Sample, ten times a second, which backends of the database wait for a lock (the
    start of the waiting statement, and of the statement of the backend it waits for)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                rows = conn.execute(sa.text(
                    "SELECT left(w.query, 60), left(b.query, 60) FROM pg_stat_activity w "
                    "LEFT JOIN pg_stat_activity b ON b.pid = (pg_blocking_pids(w.pid))[1] "
                    "WHERE w.datname = current_database() AND w.wait_event_type = 'Lock'")).all()
                conn.commit()
                seen.append(len(rows))
                for waiting, blocking in rows:
                    key = f"{' '.join(waiting.split())} <- {' '.join((blocking or '').split())}"
                    what[key] = what.get(key, 0) + 1
                time.sleep(0.1)
    finally:
        engine.dispose()


def check_sweep(base: str, env: dict, seeded: dict, csrf: str, cookie: str, *,
                quiet_seconds: int, clients: int, parallel: int = 1) -> dict:
    """Login latency with nothing else running, then while `idp sweep` expires the history,
    then quiet again (the machine's other load moves too: both quiet phases bracket it),
    and how often any backend waited for a lock during the sweep."""
    samples: list = []
    errors: list = []
    waits: list = []
    waiting_statements: dict = {}
    stop, stop_sampling = threading.Event(), threading.Event()
    threads = [threading.Thread(target=_login_loop, args=(base, seeded, csrf, cookie, stop,
                                                          samples, errors))
               for _ in range(clients)]
    for thread in threads:
        thread.start()
    sampler = None
    try:
        time.sleep(quiet_seconds)
        sweep_started = time.monotonic()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        click.echo(f"quiet phase done ({len(samples)} sign-ins); sweeping", err=True)
        if env.get("IDP_DATABASE_URL", "").startswith("postgresql"):
            sampler = threading.Thread(target=_lock_waits,
                                       args=(env["IDP_DATABASE_URL"], stop_sampling, waits,
                                             waiting_statements))
            sampler.start()
        sweep = subprocess.run([str(Path(sys.executable).parent / "idp"), "sweep", "--json",
                                "--parallel", str(parallel)],
                               env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
        sweep_ended = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stop_sampling.set()
        click.echo("sweep done; quiet again", err=True)
        time.sleep(quiet_seconds)
    finally:
        stop.set()
        stop_sampling.set()
        for thread in threads:
            thread.join(timeout=60)
        if sampler is not None:
            sampler.join(timeout=10)
    if sweep.returncode != 0:
        raise SystemExit(f"idp sweep failed: {sweep.stderr[-2000:]}")
    before = [d for t, d in samples if t + d < sweep_started]
    during = [d for t, d in samples if sweep_started <= t and t + d <= sweep_ended]
    later = [d for t, d in samples if t > sweep_ended]
    result = {"sweep": json.loads(sweep.stdout), "sweep_seconds": round(sweep_ended - sweep_started, 1),
              "sweep_process_cpu_seconds": round(after.ru_utime + after.ru_stime
                                                 - children.ru_utime - children.ru_stime, 1),
              "login_quiet_before": _percentiles(before), "login_during_sweep": _percentiles(during),
              "login_quiet_after": _percentiles(later),
              "lock_wait_samples": {"taken": len(waits), "with_a_wait": sum(1 for w in waits if w),
                                    "most_waiting": max(waits, default=0),
                                    "waiting <- blocking": waiting_statements},
              "login_errors": len(errors), "login_clients": clients, "sweep_parallel": parallel}
    during_p99 = result["login_during_sweep"].get("p99_ms")
    for phase in ("before", "after"):
        quiet = result[f"login_quiet_{phase}"].get("p99_ms")
        if quiet and during_p99:
            result[f"p99_ratio_vs_{phase}"] = round(during_p99 / quiet, 2)
    return result


@click.command()
@click.option("--database-url", help="Default: a fresh SQLite file in the run folder.")
@click.option("--redis-url", help="IDP_REDIS_URL for the server: rate-limit counters in Redis, "
                                  "as on several nodes.")
@click.option("--sessions", default=1000, show_default=True, type=int)
@click.option("--fresh", default=20000, show_default=True, type=int,
              help="Refresh tokens and codes seeded for the load (one per request).")
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--server", type=click.Choice(["gthread", "sync", "granian"]), default="gthread",
              show_default=True)
@click.option("--threads", default=4, show_default=True, type=int,
              help="Threads per worker (gthread, granian); `idp serve` runs 4.")
@click.option("--duration", default=10, show_default=True, type=int, help="Seconds per endpoint.")
@click.option("--connections", default=16, show_default=True, type=int)
@click.option("--only", help="Comma-separated substrings of endpoint names to run.")
@click.option("--reset-db/--keep-db", default=True, help="Wipe a PostgreSQL database first.")
@click.option("--seed-only", is_flag=True, help="Seed the history, then stop (no server, no load).")
@click.option("--reuse", is_flag=True,
              help="Keep a history of this size already seeded in the database; seed only the "
                   "fresh credentials.")
@click.option("--stale", default=0.15, show_default=True, type=click.FloatRange(0, 1),
              help="Share of sessions open but past a deadline (what idp sweep expires).")
@click.option("--sweep-check", is_flag=True,
              help="Instead of the endpoint table: login latency for --duration s, while "
                   "`idp sweep` runs over the seeded history, then --duration s again; prints "
                   "the p99 of each, lock waits seen and the sweep time.")
@click.option("--login-clients", default=2, show_default=True, type=int,
              help="Concurrent sign-ins during --sweep-check.")
@click.option("--sweep-parallel", default=1, show_default=True, type=int,
              help="`idp sweep --parallel` during --sweep-check.")
def main(database_url, redis_url, sessions, fresh, workers, server, threads, duration,
         connections, only, reset_db, seed_only, reuse, stale, sweep_check, login_clients, sweep_parallel):
    if not seed_only and not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="idp-bench-"))
    port = free_port()
    env = bench_env(workdir, database_url, port, redis_url)
    started = time.monotonic()
    seeded = prepare(env, sessions, fresh, workdir, reset_db, reuse=reuse, seed_only=seed_only,
                     stale=stale)
    seed_seconds = round(time.monotonic() - started, 1)
    if seed_only:
        click.echo(f"seeded in {seed_seconds} s; run again with --reuse to measure", err=True)
        shutil.rmtree(workdir, ignore_errors=True)
        return
    login_cookie, login_csrf = None, None
    process = start_server(server, env, port, workers, threads)
    base = f"http://127.0.0.1:{port}"
    try:
        page = httpx.get(f"{base}/login")
        login_csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                               page.text).group(1)
        login_cookie = "; ".join(f"{k}={v}" for k, v in page.cookies.items())
        if sweep_check:
            result = check_sweep(base, env, seeded, login_csrf, login_cookie,
                                 quiet_seconds=duration, clients=login_clients,
                                 parallel=sweep_parallel)
            result.update(sessions=sessions, database="postgresql" if (database_url or "")
                          .startswith("postgresql") else "sqlite", workers=workers)
            print(json.dumps(result, indent=2))
            RESULTS.mkdir(exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            (RESULTS / f"{stamp}-sweep-check-{sessions}.json").write_text(json.dumps(result))
        rows = []
        if not sweep_check:  # warm the workers first: the reference row must not pay for it
            wrk(f"{base}/healthz", LUA / "get.lua", {**os.environ, "BENCH_LUA_DIR": str(LUA)},
                3, connections, 2)
        selected = [] if sweep_check else [
            row for row in ENDPOINTS
            if not only or row is ENDPOINTS[0] or any(part in row[0] for part in only.split(","))]
        for name, script, path, data in selected:
            wrk_env = {**os.environ, "BENCH_PATH": path, "BENCH_LUA_DIR": str(LUA),
                       "BENCH_DATA": str(workdir / data) if data else "",
                       "BENCH_CLIENT_ID": seeded["client_id"],
                       "BENCH_CLIENT_SECRET": seeded["client_secret"],
                       "BENCH_REDIRECT_URI": seeded["redirect_uri"],
                       "BENCH_EMAIL": seeded["emails"][0],
                       "BENCH_PASSWORD": "bench password 123",
                       "BENCH_CSRF": login_csrf, "BENCH_COOKIE": login_cookie}
            if name == ENDPOINTS[0][0] or script == "login.lua":
                # The reference itself; sign-ins queue for seconds and would slow the
                # reference slices after them, so they are measured in one piece.
                stats = wrk(base + path, LUA / script, wrk_env, duration, connections, 2)
            else:
                stats = interleaved(base, path, LUA / script, wrk_env, duration, connections)
            stats["endpoint"] = name
            rows.append(stats)
            click.echo(f"{name:42} {stats['rps']:8.0f} req/s  p50 {stats['p50_ms']:6.2f} ms  "
                       f"p99 {stats['p99_ms']:7.2f} ms  errors {stats['errors']}", err=True)
    finally:
        memory = stop_server(process)
    if sweep_check:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    ratios(rows)
    header = (f"{'endpoint':42} {'req/s':>8} {'ratio':>6} {'ref/s':>6} {'p50 ms':>7} "
              f"{'p95 ms':>7} {'p99 ms':>7} {'errors':>7} {'wrk cpu':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"{row['endpoint']:42} {row['rps']:8.0f} {ratio:>6} "
                     f"{row['reference_rps']:6.0f} {row['p50_ms']:7.2f} "
                     f"{row['p95_ms']:7.2f} {row['p99_ms']:7.2f} {row['errors']:7d} "
                     f"{row['wrk_cpu_pct']:6.1f}%")
    db_kind = "postgresql" if (database_url or "").startswith("postgresql") else "sqlite"
    summary = (f"server={server} workers={workers} threads={threads} redis={bool(redis_url)} "
               f"connections={connections} duration={duration}s db={db_kind} "
               f"sessions={sessions} worker RSS MB={memory['rss_mb']}")
    print(summary)
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"when": stamp, "server": server, "workers": workers, "threads": threads,
              "connections": connections, "redis": bool(redis_url),
              "duration": duration, "database": db_kind, "sessions": sessions,
              "seed_seconds": seed_seconds, "reused_history": reuse,
              "memory": memory, "rows": rows, "slices": SLICES,
              "machine": os.uname().nodename,
              "cpus": os.cpu_count()}
    path = RESULTS / f"{stamp}-{db_kind}-{sessions}-{server}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
