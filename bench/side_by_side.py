"""This provider beside node-oidc-provider, in one run, with the same loads.

    .venv/bin/python bench/side_by_side.py [--duration 8] [--connections 16]
        [--database-url URL] [--mint 6000] [--only introspection,userinfo]
    # at 1,000,000 sessions: seed once with bench/run.py, then keep it
    .venv/bin/python bench/run.py --sessions 1000000 --seed-only --reset-db --database-url URL
    .venv/bin/python bench/side_by_side.py --database-url URL --keep-database

Each provider is installed and started as its own documentation says: this one with
`idp serve` (its defaults: 2 workers, SQLite in a fresh instance folder, unless
--database-url), the peer with `node server.js` in bench/peers/node-oidc-provider
(oidc-provider 9.13.3, its in-memory adapter, one process, opaque access tokens, refresh
rotation; `npm install` on first use). Credentials are minted through each one's front
door: a browser-like client signs in once, then runs the authorization code flow (PKCE
S256) for every code, and exchanges codes for the access and refresh tokens the loads
present (every refresh token and code once).

Each endpoint runs as alternating slices, this provider then the peer, 4 of each, so a
slow spell of the machine hits both alike; a row's ratio is the median of the slices'
ratios (this provider's req/s over the peer's in the slice next to it). wrk, 2 threads.
Results go to bench/results/<timestamp>-side-by-side.json.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import click
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.run import LUA, RESULTS, free_port, stop_server, wrk  # noqa: E402

PEER = Path(__file__).resolve().parent / "peers" / "node-oidc-provider"
VERIFIER = "bench-verifier-" + "v" * 40
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
SLICES = 4


@dataclass
class Provider:
    """What the loads need to know of one provider."""

    name: str
    base: str
    process: subprocess.Popen
    client_id: str
    client_secret: str
    redirect_uri: str
    paths: dict
    cookies: dict = field(default_factory=dict)  # a signed-in browser's cookies, if any
    demo: dict = field(default_factory=dict)  # this provider's demo user and client
    files: dict = field(default_factory=dict)


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {seconds} s")


def demo_in_history(env: dict, workdir: Path) -> dict:
    """A demo account, owner and client added with the CLI to a database that already holds
    a history (seeded by bench/run.py), where `idp serve` creates no demo."""
    idp = str(Path(sys.executable).parent / "idp")
    name, password = f"side-{secrets.token_hex(3)}", secrets.token_urlsafe(12)

    def run(*args: str, stdin: str | None = None) -> dict:
        done = subprocess.run([idp, *args, "--json"], cwd=workdir, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120, check=True)
        return json.loads(done.stdout)

    run("create-account", name)
    user = run("create-user", "--account", name, "--email", f"{name}@example.com",
               "--role", "owner", "--password-stdin", stdin=password + "\n")
    redirect_uri = "http://127.0.0.1:8000/callback"
    client = run("create-client", "--name", "Side by side", "--redirect-uri", redirect_uri)
    return {"user": user["email"], "password": password, "client_id": client["client_id"],
            "client_secret": client["client_secret"], "redirect_uri": redirect_uri}


def start_ours(workdir: Path, database_url: str | None, settings: tuple = (),
               keep_database: bool = False, log: Path | None = None) -> Provider:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(IDP_INSTANCE_DIR=str(workdir / "instance"), IDP_KEYS_DIR=str(workdir / "keys"),
               IDP_ISSUER=f"http://127.0.0.1:{port}")
    env.update(setting.split("=", 1) for setting in settings)
    if database_url and not keep_database:  # wiped: `idp serve` makes the demo on an empty one
        import sqlalchemy as sa

        engine = sa.create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
        engine.dispose()
    if database_url:
        env["IDP_DATABASE_URL"] = database_url
    idp = Path(sys.executable).parent / "idp"
    process = subprocess.Popen([str(idp), "serve", "--json", "--port", str(port)], cwd=workdir,
                               env=env, stdout=subprocess.PIPE,
                               stderr=log.open("w") if log else subprocess.DEVNULL,
                               start_new_session=True, text=True)
    first = json.loads(process.stdout.readline())
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/healthz", process)
    demo = first["demo"] or demo_in_history(env, workdir)
    ours = Provider("this provider", base, process, demo["client_id"], demo["client_secret"],
                    demo["redirect_uri"], {
                        "discovery": "/.well-known/openid-configuration",
                        "jwks": "/.well-known/jwks.json", "introspection": "/oauth/introspect",
                        "userinfo": "/userinfo", "token": "/oauth/token",
                        "authorize": "/authorize"})
    with httpx.Client(base_url=base, timeout=30) as browser:
        page = browser.get("/login")
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
        signed_in = browser.post("/login", data={"csrf_token": token, "email": demo["user"],
                                                 "password": demo["password"]})
        assert signed_in.status_code == 303, signed_in.text[:300]
        ours.cookies = dict(browser.cookies)
    ours.demo = demo
    return ours


def start_peer(workdir: Path) -> Provider:
    if not (PEER / "node_modules" / "oidc-provider").exists():
        click.echo("installing node-oidc-provider (npm ci, once)", err=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER, check=True,
                       timeout=600)
    port = free_port()
    client_id, secret = "bench", secrets.token_urlsafe(24)
    redirect_uri = "http://127.0.0.1:8000/callback"
    env = {**os.environ, "PORT": str(port), "CLIENT_ID": client_id, "CLIENT_SECRET": secret,
           "REDIRECT_URI": redirect_uri, "NODE_ENV": "production"}
    process = subprocess.Popen(["node", "server.js"], cwd=PEER, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/.well-known/openid-configuration", process)
    return Provider("node-oidc-provider", base, process, client_id, secret, redirect_uri, {
        "discovery": "/.well-known/openid-configuration", "jwks": "/jwks",
        "introspection": "/token/introspection", "userinfo": "/me", "token": "/token",
        "authorize": "/auth"})


def mint_code(provider: Provider, http: httpx.Client) -> str:
    """One run of the front channel: authorize, follow the provider's own redirects
    (sign-in is remembered, consent given) until it redirects to the client."""
    query = urlencode({"response_type": "code", "client_id": provider.client_id,
                       "redirect_uri": provider.redirect_uri, "scope": "openid profile email",
                       "state": secrets.token_urlsafe(8), "nonce": secrets.token_urlsafe(8),
                       "code_challenge": CHALLENGE, "code_challenge_method": "S256"})
    url = f"{provider.base}{provider.paths['authorize']}?{query}"
    for _ in range(8):
        response = http.get(url)
        if response.status_code == 200 and "csrf_token" in response.text:  # consent
            token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                              response.text).group(1)
            response = http.post(url, data={"csrf_token": token, "allow": "Allow"})
        location = response.headers.get("location", "")
        if location.startswith(provider.redirect_uri):
            return parse_qs(urlsplit(location).query)["code"][0]
        if not location:
            raise SystemExit(f"{provider.name}: no redirect minting a code: "
                             f"{response.status_code} {response.text[:300]}")
        url = urljoin(url, location)
    raise SystemExit(f"{provider.name}: too many redirects minting a code")


def exchange(provider: Provider, http: httpx.Client, code: str) -> dict:
    response = http.post(f"{provider.base}{provider.paths['token']}", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": provider.redirect_uri,
        "code_verifier": VERIFIER}, auth=(provider.client_id, provider.client_secret))
    if response.status_code != 200:
        raise SystemExit(f"{provider.name}: exchange failed: {response.text[:300]}")
    return response.json()


def mint(provider: Provider, workdir: Path, kind: str, count: int) -> None:
    """``count`` codes, or token responses (``tokens``: their access and refresh tokens),
    just before the rows that present them (codes live a minute on both providers),
    through the front door by bench/peers/mint.mjs (Node's fetch: a cheap client)."""
    with httpx.Client(cookies=provider.cookies, timeout=30) as http:
        mint_code(provider, http)  # the first one in Python: it gives consent if asked
    cookie = "; ".join(f"{k}={v}" for k, v in provider.cookies.items())
    config = {"base": provider.base, "authorize": provider.paths["authorize"],
              "token": provider.paths["token"], "client_id": provider.client_id,
              "client_secret": provider.client_secret, "redirect_uri": provider.redirect_uri,
              "challenge": CHALLENGE, "verifier": VERIFIER, "cookie": cookie, "count": count,
              "concurrency": 16, "kind": kind}
    started = time.monotonic()
    result = subprocess.run(["node", str(PEER.parent / "mint.mjs"), json.dumps(config)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"minting failed: {result.stderr[-1500:]}")
    rows = [line.split(" ") for line in result.stdout.splitlines() if line]
    click.echo(f"  minted {len(rows)} {kind} through {provider.name}'s front door in "
               f"{time.monotonic() - started:.1f} s", err=True)
    folder = workdir / provider.name.replace(" ", "-")
    folder.mkdir(exist_ok=True)
    names = ("codes",) if kind == "codes" else ("access_tokens", "refresh_tokens")
    for index, name in enumerate(names):
        path = folder / f"{name}.txt"
        path.write_text("\n".join(row[index] for row in rows) + "\n")
        provider.files[name] = path


LOADS = [
    # row, lua script, path key, data file
    ("discovery", "get.lua", "discovery", None),
    ("jwks", "get.lua", "jwks", None),
    ("introspection", "introspect.lua", "introspection", "access_tokens"),
    ("userinfo", "bearer.lua", "userinfo", "access_tokens"),
    ("refresh_token grant", "refresh.lua", "token", "refresh_tokens"),
    ("authorization_code exchange", "code.lua", "token", "codes"),
]


def load_env(provider: Provider, path_key: str, data: str | None, offset: int) -> dict:
    return {**os.environ, "BENCH_LUA_DIR": str(LUA), "BENCH_PATH": provider.paths[path_key],
            "BENCH_DATA": str(provider.files[data]) if data else "",
            "BENCH_CLIENT_ID": provider.client_id, "BENCH_CLIENT_SECRET": provider.client_secret,
            "BENCH_REDIRECT_URI": provider.redirect_uri, "BENCH_VERIFIER": VERIFIER,
            "BENCH_CHAIN": "1",
            "BENCH_OFFSET": str(offset)}


def side_by_side(ours: Provider, peer: Provider, row: tuple, duration: int,
                 connections: int, workdir: Path, counts: dict) -> dict:
    name, script, path_key, data = row
    each = max(1, round(duration / SLICES))
    slices = {ours.name: [], peer.name: []}
    offsets = {ours.name: 0, peer.name: 0}
    for _ in range(SLICES):
        for provider in (ours, peer):
            if data == "codes":  # codes live a minute: minted just before each slice,
                # as many as the last slice used and a third more
                done = slices[provider.name]
                mint(provider, workdir, "codes", int(done[-1]["rps"] * each * 1.35) + 200
                     if done else counts[provider.name])
                offsets[provider.name] = 0
            part = wrk(provider.base + provider.paths[path_key], LUA / script,
                       load_env(provider, path_key, data, offsets[provider.name]), each,
                       connections, 2)
            offsets[provider.name] = max(offsets[provider.name], part.get("cursor", 0))
            slices[provider.name].append(part)
    result = {"endpoint": name}
    for provider in (ours, peer):
        parts = slices[provider.name]
        result[provider.name] = {
            "rps": round(sum(p["requests"] for p in parts) / (each * SLICES), 1),
            **{k: round(statistics.median(p[k] for p in parts), 2)
               for k in ("p50_ms", "p95_ms", "p99_ms")},
            "errors": sum(p["errors"] for p in parts),
            "wrk_cpu_pct": round(statistics.mean(p["wrk_cpu_pct"] for p in parts), 1),
            "slices": [p["rps"] for p in parts]}
    result["ratio"] = round(statistics.median(
        a["rps"] / max(b["rps"], 0.1)
        for a, b in zip(slices[ours.name], slices[peer.name], strict=True)), 2)
    return result


def stop(provider: Provider) -> dict:
    if provider.name == "this provider":
        return stop_server(provider.process)
    rss = []
    try:
        status = Path(f"/proc/{provider.process.pid}/status").read_text()
        rss.append(int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024)
    except (OSError, AttributeError):
        pass
    os.killpg(provider.process.pid, signal.SIGTERM)
    try:
        provider.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(provider.process.pid, signal.SIGKILL)
    return {"rss_mb": rss}


@click.command()
@click.option("--database-url", help="This provider's PostgreSQL database, wiped first "
                                    "(default: SQLite, as `idp serve`).")
@click.option("--duration", default=8, show_default=True, type=int,
              help="Seconds per endpoint and provider.")
@click.option("--connections", default=16, show_default=True, type=int)
@click.option("--mint", "count", default=1500, show_default=True, type=int,
              help="Codes minted for this provider's first exchange slice (later slices: "
                   "what the last one used and a third more).")
@click.option("--peer-mint", "peer_count", default=8000, show_default=True, type=int,
              help="The same for node-oidc-provider (it answers more requests per second).")
@click.option("--only", help="Comma-separated substrings of row names to run.")
@click.option("--keep-database", is_flag=True,
              help="Keep what --database-url holds (a history seeded by bench/run.py "
                   "--seed-only, e.g. 1,000,000 sessions) and add a demo client to it.")
@click.option("--set", "settings", multiple=True, metavar="IDP_NAME=VALUE",
              help="A setting for this provider (repeat), e.g. IDP_KEEPALIVE_REQUESTS=0.")
@click.option("--server-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Write this provider's log (one JSON line per request) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def main(database_url, duration, connections, count, peer_count, only, keep_database, settings,
         server_log, as_json):
    if not shutil.which("wrk") or not shutil.which("node"):
        raise SystemExit("needs wrk (apt-get install wrk) and Node.js with npm")
    workdir = Path(tempfile.mkdtemp(prefix="idp-side-by-side-"))
    ours = peer = None
    rows, memory = [], {}
    try:
        ours = start_ours(workdir, database_url, settings, keep_database, server_log)
        peer = start_peer(workdir)
        counts = {ours.name: count, peer.name: peer_count}
        for provider in (ours, peer):
            mint(provider, workdir, "tokens", 400)
        for provider in (ours, peer):  # warm both
            wrk(provider.base + provider.paths["discovery"], LUA / "get.lua",
                load_env(provider, "discovery", None, 0), 3, connections, 2)
        for row in LOADS:
            if only and not any(part in row[0] for part in only.split(",")):
                continue
            result = side_by_side(ours, peer, row, duration, connections, workdir, counts)
            rows.append(result)
            click.echo(f"{row[0]:30} node {result[peer.name]['rps']:8.0f}  ours "
                       f"{result[ours.name]['rps']:8.0f}  ratio {result['ratio']:.2f}  "
                       f"p99 ours {result[ours.name]['p99_ms']:.1f} ms", err=True)
    finally:
        for provider in (ours, peer):
            if provider is not None:
                memory[provider.name] = stop(provider)
        shutil.rmtree(workdir, ignore_errors=True)
    db_kind = "postgresql" if (database_url or "").startswith("postgresql") else "sqlite"
    result = {"when": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"), "database": db_kind,
              "kept_database": keep_database,
              "settings": list(settings),
              "duration": duration, "connections": connections, "minted": counts,
              "slices": SLICES, "memory": memory, "rows": rows, "cpus": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{result['when']}-side-by-side-{db_kind}.json"
    path.write_text(json.dumps(result, indent=2))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    head = (f"| endpoint (req/s, {connections} connections) | node-oidc-provider | this provider "
            f"| ratio | p99 ms, this | p99 ms, node | errors |")
    print(head)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        a, b = row["this provider"], row["node-oidc-provider"]
        print(f"| {row['endpoint']} | {b['rps']:,.0f} | {a['rps']:,.0f} | {row['ratio']:.2f} | "
              f"{a['p99_ms']:.1f} | {b['p99_ms']:.1f} | {a['errors'] + b['errors']} |")
    print(f"memory (MB RSS): {json.dumps(memory)}; db={db_kind}; results: {path}")


if __name__ == "__main__":
    main()
