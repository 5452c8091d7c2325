"""Mixed load against the production server, then every invariant checked in the database.

``idp serve --workers 2`` (gunicorn, gthread) and ``idp worker`` run as subprocesses on a
PostgreSQL database of their own. For ``IDP_LOAD_SECONDS`` (default 120) a few threads
(``IDP_LOAD_THREADS``, default 4) act as browsers and relying parties over real HTTP:
sign-ins through the login page (CSRF, authorize, consent, code exchange with PKCE),
refresh-token rotation, introspection by the client and by a resource server, userinfo,
the sessions API and pages, and every way a session ends (the API, the account pages,
RP-initiated logout, the logout form, "end all", an administrator, the concurrent-session
limit). Some actions race on purpose: two refreshes with one token, a replayed refresh
token, a session ended while its refresh or its code exchange is in flight.

A loopback relying party receives the back-channel logout tokens and verifies each one
against the published JWKS. The test fails on any 5xx or dropped request, on anything
that works after the client knew its session had ended, on a lost or duplicated logout
token, and on any DESIGN.md invariant the database breaks once the outbox has drained.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import joserfc.jwt as jwt
import pytest
import sqlalchemy as sa
from joserfc.jwk import KeySet

from tests.conftest import PASSWORD
from tests.e2e.processes import serve

pytestmark = pytest.mark.e2e

PG_URL = os.environ.get("IDP_TEST_DATABASE_URL")
LOAD_SECONDS = float(os.environ.get("IDP_LOAD_SECONDS", "120"))
THREADS = int(os.environ.get("IDP_LOAD_THREADS", "4"))
WORKERS = 2
TIMEOUT = httpx.Timeout(30.0, connect=5.0)  # every request is bounded
# gunicorn closes a keep-alive connection after 2 s idle; a client that reuses one just as
# it closes sees a reset, as browsers do (they retry). Idle connections are dropped first.
KEEPALIVE = 1.0
DRAIN_SECONDS = 90  # the outbox must be empty this long after the load at the latest
EVENT = "http://schemas.openid.net/event/backchannel-logout"
REDIRECTS = {301, 302, 303, 307, 308}
ACME_USERS = 8  # user 0 is the account's owner (an administrator)
TIGHT_USERS = 3
TIGHT_LIMIT = 3  # the "tight" account: 3 concurrent sessions, the oldest ends
MIN_LIVE, MAX_LIVE = 12, 40  # sessions the load keeps in use
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
# The console script operators run (installed beside this interpreter).
IDP = ([str(Path(sys.executable).parent / "idp")] if (Path(sys.executable).parent / "idp").exists()
       else [sys.executable, "-c", "import sys; from idp.cli import main; main(sys.argv[1:])"])
END_REASONS = {"logout", "ended_by_user", "ended_all", "ended_by_admin", "expired_duration",
               "expired_idle", "evicted_concurrent", "password_changed", "disabled"}
USER_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Mobile/15E148 Safari/604.1",
]
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


# -- bookkeeping ---------------------------------------------------------------------------------


class Abort(Exception):
    """A request failed in a way already counted (5xx, dropped): the action stops here."""


class Stats:
    """Every response by kind and status, latencies, and everything that fails the test."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.server_errors: list[str] = []
        self.dropped: list[str] = []
        self.violations: list[str] = []
        self.harness_errors: list[str] = []
        self.outcomes: Counter[str] = Counter()

    def request(self, kind: str, http: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
        started = time.monotonic()
        try:
            response = http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            with self.lock:
                self.counts[(kind, type(exc).__name__)] += 1
                self.dropped.append(f"{kind} {method} {urlsplit(url).path}: {type(exc).__name__}: {exc}")
            raise Abort() from exc
        elapsed = time.monotonic() - started
        with self.lock:
            self.counts[(kind, str(response.status_code))] += 1
            self.latency[kind].append(elapsed)
            if response.status_code >= 500:
                self.server_errors.append(
                    f"{kind} {method} {urlsplit(url).path} -> {response.status_code} (request id "
                    f"{response.headers.get('X-Request-ID')}): {plain_text(response.text)[:300]}")
        if response.status_code >= 500:
            raise Abort()
        return response

    def violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def outcome(self, name: str) -> None:
        with self.lock:
            self.outcomes[name] += 1

    def total(self, prefix: str = "") -> int:
        return sum(n for (kind, _), n in self.counts.items() if kind.startswith(prefix))


def plain_text(body: str) -> str:
    """An error page or JSON body in one short line."""
    main = re.search(r"<main[^>]*>(.*?)</main>", body, re.S)
    text = re.sub(r"<[^>]+>", " ", main.group(1) if main else body)
    return " ".join(text.split())


def jwt_claims(value: str) -> dict:
    """The payload of a JWT this client holds (its signature is the provider's business
    here; logout tokens, which a relying party must trust, are verified in full)."""
    payload = value.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def csrf_of(html: str) -> str | None:
    match = CSRF.search(html)
    return match.group(1) if match else None


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- the world -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rp:
    name: str
    client_id: str
    secret: str
    redirect_uri: str
    scope: str
    backchannel: bool


@dataclass(frozen=True)
class User:
    email: str
    sub: str
    account: str
    admin: bool


@dataclass
class Grant:
    """One token family this relying party holds: always its newest tokens."""

    rp: Rp
    family: str
    access: str
    refresh: str
    id_token: str

    def update(self, body: dict) -> None:
        self.access = body["access_token"]
        self.refresh = body["refresh_token"]


@dataclass(eq=False)
class Live:
    """One login session as its browser and relying parties see it."""

    sid: str
    user: User
    browser: httpx.Client
    grants: dict[str, Grant]
    started: float  # monotonic: when the login response (with the cookie) came back
    lock: threading.Lock = field(default_factory=threading.Lock)
    gone: bool = False  # found dead (ended by someone else): no longer used


# -- the back-channel logout receiver --------------------------------------------------------------


@dataclass
class Receipt:
    client_id: str
    sid: str
    sub: str
    jti: str
    at: float


class Receiver:
    """The relying parties' back-channel logout endpoints (/bc/<client name>)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.receipts: list[Receipt] = []
        self.rejected: list[str] = []
        self.issuer = ""
        self.clients: dict[str, str] = {}  # path name -> client_id
        self.keys: KeySet | None = None
        self.on_logout: Callable[[str, float], None] = lambda sid, at: None

    def jwks(self, refresh: bool = False) -> KeySet:
        if self.keys is None or refresh:
            self.keys = KeySet.import_key_set(
                httpx.get(f"{self.issuer}/.well-known/jwks.json", timeout=TIMEOUT).json())
        return self.keys

    def accept(self, path: str, logout_token: str) -> int:
        """Back-Channel Logout 1.0 §2.6: verify, then act on the sid. 400 if invalid."""
        at = time.monotonic()
        name = path.removeprefix("/bc/")
        try:
            client_id = self.clients[name]
            try:
                token = jwt.decode(logout_token, self.jwks(), algorithms=["RS256", "ES256"])
            except Exception:  # noqa: BLE001 - an unknown kid: fetch the JWKS once more
                token = jwt.decode(logout_token, self.jwks(refresh=True), algorithms=["RS256", "ES256"])
            assert token.header.get("typ") == "logout+jwt", token.header
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": client_id},
                iat={"essential": True},
                exp={"essential": True},
                jti={"essential": True},
                sub={"essential": True},
                sid={"essential": True},
                events={"essential": True},
            ).validate(token.claims)
            assert token.claims["events"] == {EVENT: {}}, token.claims
            assert "nonce" not in token.claims
        except Exception as exc:  # noqa: BLE001 - any reason to refuse is recorded
            with self.lock:
                self.rejected.append(f"{path}: {type(exc).__name__}: {exc}")
            return 400
        claims = token.claims
        with self.lock:
            self.receipts.append(Receipt(client_id, claims["sid"], claims["sub"], claims["jti"], at))
        self.on_logout(claims["sid"], at)
        return 200

    def by_client(self) -> dict[str, Counter[str]]:
        with self.lock:
            result: dict[str, Counter[str]] = defaultdict(Counter)
            for receipt in self.receipts:
                result[receipt.client_id][receipt.sid] += 1
            return result


class _ReceiverHandler(BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        status = self.receiver.accept(self.path, form.get("logout_token", [""])[0])
        self.send_response(status)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def receiving(receiver: Receiver):
    handler = type("Handler", (_ReceiverHandler,), {"receiver": receiver})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- the provider's processes -------------------------------------------------------------------


@contextmanager
def running(name: str, args: list[str], env: dict, logs: Path):
    """A subprocess in its own process group (``idp worker``), stopped whatever happens:
    SIGTERM (it finishes its pass), then SIGKILL."""
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, env=env, cwd=logs, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            yield process
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def server_errors_in(log_path: Path, limit: int = 5) -> list[str]:
    """Tracebacks and error records the server wrote (its log is JSON lines)."""
    found = []
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                found.append(line[:300])
            continue
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            causes = [c for c in (record.get("exc_info") or "").splitlines()
                      if re.match(r"[\w.]+(Error|Exception|Violation)\b.*:", c)] or [""]
            database = [c for c in causes if c.startswith("psycopg.errors.")]
            cause = (database or causes)[-1]
            found.append(f"{record.get('request_id')}: {record.get('message')}: {cause[:300]}")
    return found[:limit]


# -- the database --------------------------------------------------------------------------------


def load_database(url: str) -> str:
    """``<test database>_load``, dropped and created afresh: the conftest's databases
    (``test``, ``test_gw0``, ...) are never touched."""
    parsed = sa.engine.make_url(url)
    name = f"{parsed.database}_load"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def seed(settings: dict, receiver_url: str) -> tuple[list[User], dict[str, Rp], Rp]:
    """Schema, accounts, users and clients, through the app factory on the same database."""
    from flask_migrate import upgrade

    from idp import MIGRATIONS_DIR, accounts, create_app
    from idp.models import db

    app = create_app(settings)
    users: list[User] = []
    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
        services = app.extensions["idp"]
        now = services.clock.now()
        acme = accounts.create_account("acme", now=now, max_duration=24 * 3600, idle_timeout=2 * 3600)
        tight = accounts.create_account("tight", now=now, max_duration=24 * 3600,
                                        idle_timeout=2 * 3600)
        tight.max_concurrent_sessions = TIGHT_LIMIT
        tight.on_concurrent_limit = "end_oldest"
        for account, count in ((acme, ACME_USERS), (tight, TIGHT_USERS)):
            for i in range(count):
                role = "owner" if i == 0 and account is acme else "member"
                user = accounts.create_user(
                    account, email=f"user{i}@{account.name}.test", password=PASSWORD, role=role,
                    name=f"User {i} of {account.name}", hasher=services.passwords, now=now,
                )
                users.append(User(user.email, user.sub, account.name, role == "owner"))

        def client(name: str, **kwargs) -> Rp:
            redirect_uri = f"http://127.0.0.1:9/{name}/cb"
            row, secret = accounts.create_client(name=name.title(), redirect_uris=[redirect_uri],
                                                 now=now, **kwargs)
            return Rp(name, row.client_id, secret, redirect_uri, row.scope,
                      row.backchannel_logout_uri is not None)

        rps = {
            # First party, the sessions API scope, back-channel logout (RS256).
            "photos": client("photos", first_party=True, scope="openid profile email sessions",
                             backchannel_logout_uri=f"{receiver_url}/bc/photos"),
            # Third party (consent once per user), back-channel logout signed ES256.
            "mail": client("mail", scope="openid email", id_token_alg="ES256",
                           backchannel_logout_uri=f"{receiver_url}/bc/mail"),
            # Holds tokens but registered no back-channel URI: never notified.
            "notes": client("notes", first_party=True, scope="openid profile"),
        }
        row, secret = accounts.create_client(name="Orders API", redirect_uris=[], resource_server=True,
                                             now=now)
        api = Rp("api", row.client_id, secret, "", "", False)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return users, rps, api


# -- the load ------------------------------------------------------------------------------------


WEIGHTS = {
    "login": 3.0, "refresh": 6.0, "introspect": 8.0, "userinfo": 3.0, "api_list": 1.5,
    "account_page": 1.0, "admin_page": 0.2, "end": 2.5, "race_double_refresh": 0.4,
    "replay": 0.4, "race_end_refresh": 0.4, "race_end_exchange": 0.3,
}
END_VARIANTS = {
    "api_self": 2, "api_other": 1.5, "account_self": 1, "account_other": 1, "rp_logout": 1.5,
    "logout_form": 1, "api_all": 0.5, "api_others": 0.5, "account_all": 0.5, "admin": 0.7,
}


class Load:
    def __init__(self, base: str, users: list[User], rps: dict[str, Rp], api: Rp, stats: Stats):
        self.base = base
        self.users = users
        self.rps = rps
        self.api = api
        self.stats = stats
        self.backend = httpx.Client(timeout=TIMEOUT, limits=httpx.Limits(
            max_connections=THREADS * 4, keepalive_expiry=KEEPALIVE))
        self.meta = self.backend.get(f"{base}/.well-known/openid-configuration").json()
        self.lock = threading.Lock()
        self.live: dict[str, Live] = {}  # in use by the load
        self.sessions: dict[str, Live] = {}  # every session the load signed in
        self.ended: dict[str, float] = {}  # sid -> monotonic time the client knew it had ended
        self.ended_how: dict[str, str] = {}
        self.reused_families: set[str] = set()
        # Sessions missing from their own token's active listing (sid, wall time sent): a
        # concurrent ending explains it only if the session did end then (checked at the end).
        self.unlisted_current: list[tuple[str, datetime]] = []
        self.browsers: list[httpx.Client] = []

    # -- what the client knows -------------------------------------------------------------

    def mark_ended(self, sid: str, at: float | None = None, how: str = "a logout token") -> None:
        at = time.monotonic() if at is None else at
        with self.lock:
            if at < self.ended.get(sid, float("inf")):
                self.ended_how[sid] = how  # what told the client (named in a violation)
            self.ended[sid] = min(self.ended.get(sid, at), at)
            live = self.live.pop(sid, None)
        if live is not None:
            live.gone = True

    def ended_before(self, sid: str, sent: float) -> bool:
        with self.lock:
            at = self.ended.get(sid)
        return at is not None and at < sent

    def expect_dead(self, sid: str, sent: float, what: str) -> None:
        """Invariant 2: once a session has ended, nothing under it works, on any node."""
        if self.ended_before(sid, sent):
            self.stats.violation(f"{what} after session {sid} had ended "
                                 f"({sent - self.ended[sid]:.3f} s after the client knew, "
                                 f"from {self.ended_how[sid]})")

    def user_sessions(self, user: User, before: float) -> list[str]:
        with self.lock:
            return [s.sid for s in self.sessions.values() if s.user == user and s.started < before]

    # -- the pool --------------------------------------------------------------------------

    def acquire(self, accept: Callable[[Live], bool] = lambda s: True) -> Live | None:
        with self.lock:
            candidates = [s for s in self.live.values() if accept(s)]
        random.shuffle(candidates)
        for live in candidates:
            if live.lock.acquire(blocking=False):
                if not live.gone:
                    return live
                live.lock.release()
        return None

    def release(self, live: Live) -> None:
        if live.gone or "photos" not in live.grants:
            live.gone = True
            with self.lock:
                self.live.pop(live.sid, None)
            live.browser.close()  # nobody takes it again: it left the pool
        live.lock.release()

    @contextmanager
    def holding(self, *lives: Live):
        try:
            yield
        finally:
            for live in lives:
                self.release(live)

    # -- protocol steps --------------------------------------------------------------------

    def new_browser(self) -> httpx.Client:
        browser = httpx.Client(timeout=TIMEOUT, headers={"User-Agent": random.choice(USER_AGENTS)},
                               limits=httpx.Limits(keepalive_expiry=KEEPALIVE))
        with self.lock:
            self.browsers.append(browser)
        return browser

    def authorize(self, browser: httpx.Client, rp: Rp, user: User, *, allow_login: bool):
        """Authorization code + PKCE in a browser: (code, verifier, signed-in time) or None."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        state = secrets.token_urlsafe(16)
        params = {"response_type": "code", "client_id": rp.client_id, "redirect_uri": rp.redirect_uri,
                  "scope": rp.scope, "state": state, "nonce": secrets.token_urlsafe(16),
                  "code_challenge": challenge.decode(), "code_challenge_method": "S256"}
        response = self.stats.request("authorize", browser, "GET", self.meta["authorization_endpoint"],
                                      params=params)
        signed_in = None
        for _ in range(10):
            if response.status_code in REDIRECTS:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(rp.redirect_uri):
                    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
                    if query.get("state") != state:
                        self.stats.violation(f"authorize returned state {query.get('state')!r}")
                    if "code" not in query:
                        self.stats.outcome(f"authorize:{query.get('error')}")
                        return None
                    return query["code"], verifier, signed_in
                kind = {"/login": "login_page", "/oauth/authorize": "authorize"}.get(
                    urlsplit(location).path, "page")
                response = self.stats.request(kind, browser, "GET", location)
            elif response.status_code == 200 and 'name="password"' in response.text:
                if not allow_login:
                    return None
                response = self.stats.request("login_post", browser, "POST", f"{self.base}/login", data={
                    "csrf_token": csrf_of(response.text), "email": user.email, "password": PASSWORD})
                if response.status_code == 303:
                    signed_in = time.monotonic()
            elif response.status_code == 200 and "wants to access your account" in response.text:
                url, form = str(response.url), {"csrf_token": csrf_of(response.text), "allow": "Allow"}
                if random.random() < 0.5:
                    response = self.stats.request("consent", browser, "POST", url, data=form)
                else:
                    response = self.double_submit(browser, url, form)
            else:
                self.stats.outcome(f"authorize:stopped:{response.status_code}")
                return None
        self.stats.outcome("authorize:too_many_hops")
        return None

    def double_submit(self, browser: httpx.Client, url: str, form: dict) -> httpx.Response:
        """A double click on "Allow": the consent form posted twice at once."""
        answers = self.both(
            lambda: self.stats.request("consent_double", browser, "POST", url, data=form),
            lambda: self.stats.request("consent_double", browser, "POST", url, data=form))
        answered = [r for r in answers if r is not None]
        if not answered:
            raise Abort()
        # Each answer is a redirect to the client: one with a code; the other with a code
        # too, or refused as a replay of the same nonce (OIDC Core 3.1.2.1 lets it).
        codes = [r for r in answered if "code=" in r.headers.get("location", "")]
        self.stats.outcome(f"consent_double:{len(codes)}_codes")
        return (codes or answered)[0]

    def token(self, kind: str, rp: Rp, data: dict) -> httpx.Response:
        if rp.name == "photos":
            data = {**data, "resource": self.api.client_id}  # RFC 8707: the API may introspect
        return self.stats.request(kind, self.backend, "POST", self.meta["token_endpoint"], data=data,
                                  auth=(rp.client_id, rp.secret))

    def exchange(self, rp: Rp, code: str, verifier: str, kind: str = "token_code") -> httpx.Response:
        return self.token(kind, rp, {"grant_type": "authorization_code", "code": code,
                                     "redirect_uri": rp.redirect_uri, "code_verifier": verifier})

    def refresh(self, grant: Grant, token: str | None = None, kind: str = "token_refresh"):
        return self.token(kind, grant.rp, {"grant_type": "refresh_token",
                                           "refresh_token": token or grant.refresh})

    def introspect(self, token: str, rp: Rp, kind: str) -> httpx.Response:
        return self.stats.request(kind, self.backend, "POST", self.meta["introspection_endpoint"],
                                  data={"token": token}, auth=(rp.client_id, rp.secret))

    def grant_of(self, rp: Rp, body: dict) -> Grant:
        return Grant(rp, jwt_claims(body["access_token"])["fam"], body["access_token"],
                     body["refresh_token"], body["id_token"])

    def sign_in(self, user: User) -> Live | None:
        browser = self.new_browser()
        got = self.authorize(browser, self.rps["photos"], user, allow_login=True)
        if got is None:
            return None
        code, verifier, signed_in = got
        response = self.exchange(self.rps["photos"], code, verifier)
        if response.status_code != 200:
            self.stats.outcome(f"sign_in:exchange:{response.status_code}")
            return None
        body = response.json()
        sid = jwt_claims(body["id_token"])["sid"]
        live = Live(sid, user, browser, {"photos": self.grant_of(self.rps["photos"], body)},
                    signed_in or time.monotonic())
        with self.lock:
            self.sessions[sid] = live
        return live

    def add_grant(self, live: Live, rp: Rp) -> bool:
        """Single sign-on: the browser's session authorizes another client (or the same
        one again after its family was revoked): a new family under the same session."""
        sent = time.monotonic()
        got = self.authorize(live.browser, rp, live.user, allow_login=False)
        if got is None:
            live.grants.pop(rp.name, None)
            return False
        response = self.exchange(rp, got[0], got[1])
        if response.status_code != 200:
            live.grants.pop(rp.name, None)
            return False
        body = response.json()
        self.expect_dead(live.sid, sent, f"sign-in to {rp.name} (code issued and exchanged)")
        if jwt_claims(body["id_token"])["sid"] != live.sid:
            self.stats.violation(f"{rp.name}: single sign-on in session {live.sid} produced sid "
                                 f"{jwt_claims(body['id_token'])['sid']}")
        live.grants[rp.name] = self.grant_of(rp, body)
        return True

    # -- actions ---------------------------------------------------------------------------

    def act_login(self) -> None:
        live = self.sign_in(random.choice(self.users))
        if live is None:
            return
        for name, chance in (("mail", 0.35), ("notes", 0.2)):
            if random.random() < chance:
                self.add_grant(live, self.rps[name])
        with self.lock:
            if live.sid not in self.ended:
                self.live[live.sid] = live

    def act_refresh(self) -> None:
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            grant = random.choice(list(live.grants.values()))
            sent = time.monotonic()
            response = self.refresh(grant)
            if response.status_code == 200:
                self.expect_dead(live.sid, sent, f"refresh ({grant.rp.name})")
                grant.update(response.json())
            elif response.status_code == 400:
                live.gone = True  # ended by someone else (another thread, the session limit)

    def act_introspect(self) -> None:
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            grant = random.choice(list(live.grants.values()))
            if random.random() < 0.5:
                # The resource server checks an access token meant for it; others by their client.
                who = self.api if grant.rp.name == "photos" else grant.rp
                token, kind = grant.access, "introspect_access"
            else:
                who, token, kind = grant.rp, grant.refresh, "introspect_refresh"
            sent = time.monotonic()
            response = self.introspect(token, who, kind)
            if response.status_code != 200:
                return
            body = response.json()
            if body.get("active"):
                self.expect_dead(live.sid, sent, f"{kind} answered active ({grant.rp.name})")
                if body.get("sid") != live.sid or body.get("client_id") != grant.rp.client_id:
                    self.stats.violation(f"{kind}: wrong sid/client_id in {body}")
            elif body != {"active": False}:
                self.stats.violation(f"{kind}: inactive answer with details {body}")
            else:
                live.gone = True

    def act_userinfo(self) -> None:
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            grant = random.choice(list(live.grants.values()))
            sent = time.monotonic()
            response = self.stats.request("userinfo", self.backend, "GET", self.meta["userinfo_endpoint"],
                                          headers=bearer(grant.access))
            if response.status_code == 200:
                self.expect_dead(live.sid, sent, "userinfo")
                if response.json().get("sub") != live.user.sub:
                    self.stats.violation(f"userinfo answered sub {response.json().get('sub')}")
            elif response.status_code == 401:
                live.gone = True

    def act_api_list(self) -> None:
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            sent, sent_wall = time.monotonic(), datetime.now(UTC).replace(tzinfo=None)
            response = self.stats.request("api_list", self.backend, "GET", f"{self.base}/api/v1/sessions",
                                          params={"status": "active"},
                                          headers=bearer(live.grants["photos"].access))
            if response.status_code == 401:
                live.gone = True
            if response.status_code != 200:
                return
            self.expect_dead(live.sid, sent, "sessions API call")
            listed = response.json()["sessions"]
            current = [s["id"] for s in listed if s["current"]]
            if current == [] and live.sid not in {s["id"] for s in listed}:
                # The token was good when checked; an ending that committed before the
                # listing (another client's) leaves the session out of "active".
                with self.lock:
                    self.unlisted_current.append((live.sid, sent_wall))
            elif current != [live.sid]:
                self.stats.violation(f"sessions API: current is not {live.sid}")
            for session in listed:
                self.expect_dead(session["id"], sent, "sessions API listing it as active")

    def act_account_page(self) -> None:
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            sent = time.monotonic()
            response = self.stats.request("account_page", live.browser, "GET",
                                          f"{self.base}/account/sessions")
            if response.status_code == 200:
                self.expect_dead(live.sid, sent, "account page")
            else:
                live.gone = True

    def act_admin_page(self) -> None:
        live = self.acquire(lambda s: s.user.admin)
        if live is None:
            return self.act_login()
        with self.holding(live):
            response = self.stats.request("admin_page", live.browser, "GET",
                                          f"{self.base}/admin/logout-deliveries")
            if response.status_code != 200:
                live.gone = True

    # -- ending sessions, every way there is -----------------------------------------------

    def act_end(self) -> None:
        variant = random.choices(list(END_VARIANTS), weights=list(END_VARIANTS.values()))[0]
        live = self.acquire(lambda s: not s.user.admin) if variant == "admin" else self.acquire()
        if live is None:
            return self.act_login()
        partner = None
        if variant in ("api_other", "account_other"):
            partner = self.acquire(lambda s: s.user == live.user and s is not live)
        elif variant == "admin":
            partner = self.acquire(lambda s: s.user.admin and s.user.account == live.user.account)
        if variant in ("api_other", "account_other", "admin") and partner is None:
            variant = "api_self"
        with self.holding(*[x for x in (live, partner) if x is not None]):
            self.stats.outcome(f"end:{variant}")
            getattr(self, f"end_{variant}")(live, partner)

    def _confirm(self, kind: str, browser: httpx.Client, path: str) -> httpx.Response | None:
        """A confirmation page, then its form: the way the pages end sessions."""
        page = self.stats.request(f"{kind}_confirm", browser, "GET", f"{self.base}{path}")
        if page.status_code != 200 or csrf_of(page.text) is None:
            return None
        return self.stats.request(kind, browser, "POST", f"{self.base}{path}",
                                  data={"csrf_token": csrf_of(page.text)})

    def end_api_self(self, live: Live, _partner) -> None:
        response = self.stats.request("api_end", self.backend, "DELETE",
                                      f"{self.base}/api/v1/sessions/{live.sid}",
                                      headers=bearer(live.grants["photos"].access))
        if response.status_code == 200:
            if response.json()["session"]["status"] == "active":
                self.stats.violation(f"DELETE /api/v1/sessions/{live.sid} left it active")
            self.mark_ended(live.sid, how="end_api_self")
        else:
            live.gone = True

    def end_api_other(self, live: Live, partner: Live) -> None:
        response = self.stats.request("api_end", self.backend, "DELETE",
                                      f"{self.base}/api/v1/sessions/{live.sid}",
                                      headers=bearer(partner.grants["photos"].access))
        if response.status_code == 200:
            self.mark_ended(live.sid, how="end_api_other")
        else:
            partner.gone = True

    def end_account_self(self, live: Live, _partner) -> None:
        response = self._confirm("account_end", live.browser, f"/account/sessions/{live.sid}/end")
        if response is not None and response.status_code == 303:
            self.mark_ended(live.sid, how="end_account_self")  # signed out, or it had already ended
        else:
            live.gone = True

    def end_account_other(self, live: Live, partner: Live) -> None:
        response = self._confirm("account_end", partner.browser, f"/account/sessions/{live.sid}/end")
        if response is not None and response.status_code == 303:
            if urlsplit(response.headers["location"]).path == "/account/sessions":
                self.mark_ended(live.sid, how="end_account_other")
            else:
                partner.gone = True  # the partner's own session was gone: sent to sign in
        else:
            partner.gone = True

    def end_admin(self, live: Live, admin: Live) -> None:
        path = f"/admin/users/{live.user.sub}/sessions/{live.sid}/end"
        response = self._confirm("admin_end", admin.browser, path)
        if response is not None and response.status_code == 303:
            if urlsplit(response.headers["location"]).path.startswith("/admin/users/"):
                self.mark_ended(live.sid, how="end_admin")
            else:
                admin.gone = True
        else:
            admin.gone = True

    def end_rp_logout(self, live: Live, _partner) -> None:
        grant = random.choice(list(live.grants.values()))
        response = self.stats.request("rp_logout", live.browser, "GET", self.meta["end_session_endpoint"],
                                      params={"id_token_hint": grant.id_token})
        if response.status_code == 200 and "You are signed out" in response.text:
            self.mark_ended(live.sid, how="end_rp_logout")
        else:
            live.gone = True

    def end_logout_form(self, live: Live, _partner) -> None:
        page = self.stats.request("account_page", live.browser, "GET",
                                  f"{self.base}/account/sessions/end-all")
        if page.status_code != 200 or csrf_of(page.text) is None:
            live.gone = True
            return
        response = self.stats.request("logout", live.browser, "POST", f"{self.base}/logout",
                                      data={"csrf_token": csrf_of(page.text)})
        if response.status_code == 303:
            self.mark_ended(live.sid, how="end_logout_form")
        else:
            live.gone = True

    def end_api_all(self, live: Live, _partner, scope: str = "all") -> None:
        sent = time.monotonic()
        response = self.stats.request("api_end_all", self.backend, "DELETE", f"{self.base}/api/v1/sessions",
                                      params={"scope": scope},
                                      headers=bearer(live.grants["photos"].access))
        if response.status_code != 200:
            live.gone = True
            return
        ended = set(response.json()["session_ids"])
        # Every session of this user that had signed in before the call has ended now.
        ended |= set(self.user_sessions(live.user, sent))
        if scope == "others":
            if live.sid in response.json()["session_ids"]:
                self.stats.violation("DELETE /api/v1/sessions?scope=others ended the caller's session")
            ended.discard(live.sid)
        for sid in ended:
            self.mark_ended(sid, how=f"end_api_all({scope}) by {live.sid}")

    def end_api_others(self, live: Live, partner) -> None:
        self.end_api_all(live, partner, scope="others")

    def end_account_all(self, live: Live, _partner) -> None:
        sent = time.monotonic()
        response = self._confirm("account_end_all", live.browser, "/account/sessions/end-all")
        if response is not None and response.status_code == 303:
            for sid in [*self.user_sessions(live.user, sent), live.sid]:
                self.mark_ended(sid, how=f"end_account_all by {live.sid}")
        else:
            live.gone = True

    # -- races on purpose ------------------------------------------------------------------

    def both(self, first: Callable[[], httpx.Response], second: Callable[[], httpx.Response]):
        """Two requests released together; (response or None, response or None)."""
        barrier = threading.Barrier(2, timeout=30)

        def run(call):
            barrier.wait()
            try:
                return call()
            except Abort:
                return None

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.submit(run, first), pool.submit(run, second)
            return a.result(timeout=120), b.result(timeout=120)

    def check_family_dead(self, live: Live, grant: Grant, after: str) -> None:
        """The newest tokens of a family that reuse (or an ending) revoked: inactive, not
        refreshable."""
        response = self.introspect(grant.refresh, grant.rp, "introspect_refresh")
        if response.status_code == 200 and response.json() != {"active": False}:
            self.stats.violation(f"{after}: the family's newest refresh token is still active")
        response = self.refresh(grant)
        if response.status_code == 200:
            self.stats.violation(f"{after}: the family's newest refresh token still refreshes")

    def act_race_double_refresh(self) -> None:
        """Invariant 5: one refresh token presented twice at once: exactly one wins, the other
        is reuse and revokes the family."""
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            grant = random.choice(list(live.grants.values()))
            old = grant.refresh
            first, second = self.both(lambda: self.refresh(grant, old, "token_refresh_race"),
                                      lambda: self.refresh(grant, old, "token_refresh_race"))
            won = [r for r in (first, second) if r is not None and r.status_code == 200]
            self.stats.outcome(f"race_double_refresh:{len(won)}_won")
            if len(won) > 1:
                self.stats.violation(f"one refresh token refreshed twice (family {grant.family})")
            if not won:
                live.gone = True
                return
            grant.update(won[0].json())
            with self.lock:
                self.reused_families.add(grant.family)
            self.check_family_dead(live, grant, "after a refresh race")
            self.add_grant(live, grant.rp)

    def act_replay(self) -> None:
        """A rotated refresh token presented again (RFC 9700 §4.14.2): refused, and the
        family it belongs to is revoked."""
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            grant = random.choice(list(live.grants.values()))
            old = grant.refresh
            response = self.refresh(grant)
            if response.status_code != 200:
                live.gone = True
                return
            grant.update(response.json())
            replayed = self.refresh(grant, old, "token_refresh_replay")
            if replayed.status_code == 200:
                self.stats.violation(f"a rotated refresh token was accepted (family {grant.family})")
                return
            with self.lock:
                self.reused_families.add(grant.family)
            self.check_family_dead(live, grant, "after a replayed refresh token")
            self.add_grant(live, grant.rp)

    def act_race_end_refresh(self) -> None:
        """The session ends while a refresh under it is in flight."""
        live = self.acquire()
        if live is None:
            return self.act_login()
        with self.holding(live):
            grant = live.grants["photos"]
            refreshed, ended = self.both(
                lambda: self.refresh(grant, kind="token_refresh_race"),
                lambda: self.stats.request("api_end", self.backend, "DELETE",
                                           f"{self.base}/api/v1/sessions/{live.sid}",
                                           headers=bearer(grant.access)))
            if ended is not None and ended.status_code == 200:
                self.mark_ended(live.sid, how="act_race_end_refresh")
            live.gone = True
            refreshed_ok = refreshed is not None and refreshed.status_code == 200
            self.stats.outcome(f"race_end_refresh:refresh_{'won' if refreshed_ok else 'lost'}")
            if refreshed_ok:
                grant.update(refreshed.json())
            if ended is not None and ended.status_code == 200:
                self.check_family_dead(live, grant, "after a session ended during a refresh")

    def act_race_end_exchange(self) -> None:
        """The browser signs out while the relying party exchanges the code it just got."""
        user = random.choice(self.users)
        browser = self.new_browser()
        rp = self.rps["photos"]
        got = self.authorize(browser, rp, user, allow_login=True)
        if got is None:
            return
        code, verifier, signed_in = got
        page = self.stats.request("account_page", browser, "GET", f"{self.base}/account/sessions/end-all")
        if page.status_code != 200 or csrf_of(page.text) is None:
            return
        exchanged, logged_out = self.both(
            lambda: self.exchange(rp, code, verifier, "token_code_race"),
            lambda: self.stats.request("logout", browser, "POST", f"{self.base}/logout",
                                       data={"csrf_token": csrf_of(page.text)}))
        logged_out_ok = logged_out is not None and logged_out.status_code == 303
        exchanged_ok = exchanged is not None and exchanged.status_code == 200
        self.stats.outcome(f"race_end_exchange:exchange_{'won' if exchanged_ok else 'lost'}")
        if not exchanged_ok:
            return
        body = exchanged.json()
        live = Live(jwt_claims(body["id_token"])["sid"], user, browser,
                    {"photos": self.grant_of(rp, body)}, signed_in or time.monotonic(), gone=True)
        with self.lock:
            self.sessions[live.sid] = live
        if logged_out_ok:
            self.mark_ended(live.sid, how="act_race_end_exchange")
            self.check_family_dead(live, live.grants["photos"], "after a sign-out during a code exchange")

    # -- the loop --------------------------------------------------------------------------

    def choose(self) -> str:
        with self.lock:
            count = len(self.live)
        weights = dict(WEIGHTS)
        if count < MIN_LIVE:
            weights["login"] *= 6
        elif count > MAX_LIVE:
            weights["login"] = 0.3
            weights["end"] *= 3
        return random.choices(list(weights), weights=list(weights.values()))[0]

    def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            action = self.choose()
            try:
                getattr(self, f"act_{action}")()
            except Abort:
                continue
            except Exception:  # noqa: BLE001 - a harness error fails the test, with its traceback
                with self.stats.lock:
                    self.stats.harness_errors.append(f"{action}: {traceback.format_exc()}")

    def close(self) -> None:
        self.backend.close()
        for browser in self.browsers:
            browser.close()


# -- after the load ------------------------------------------------------------------------------


def check_ended_sessions_client_side(load: Load, stats: Stats, limit: int = 400) -> int:
    """Everything the client still holds under a session it knows ended: inactive at
    introspection (to its client and to the resource server) and refused at refresh."""
    ended = [load.sessions[sid] for sid in load.ended if sid in load.sessions]
    sample = random.sample(ended, min(limit, len(ended)))
    for live in sample:
        for grant in live.grants.values():
            try:
                for token, who, kind in ((grant.refresh, grant.rp, "after:introspect_refresh"),
                                         (grant.access, grant.rp, "after:introspect_access"),
                                         (grant.access, load.api, "after:introspect_access")):
                    if who is load.api and grant.rp.name != "photos":
                        continue
                    response = load.introspect(token, who, kind)
                    if response.json() != {"active": False}:
                        stats.violation(f"{kind}: a token of ended session {live.sid} answered "
                                        f"{response.json()}")
                response = load.refresh(grant, kind="after:token_refresh")
                if response.status_code != 400 or response.json().get("error") != "invalid_grant":
                    stats.violation(f"refresh under ended session {live.sid}: {response.status_code}")
            except Abort:
                continue
    return len(sample)


def query(engine: sa.Engine, sql: str, **params) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params).all())


def expected_notices(engine: sa.Engine, rps: dict[str, Rp]) -> dict[str, set[str]]:
    """Per back-channel client: every ended session under which it held a token family."""
    expected = {}
    for rp in rps.values():
        if rp.backchannel:
            expected[rp.client_id] = {row[0] for row in query(engine, """
                SELECT DISTINCT s.id FROM login_sessions s JOIN token_families f ON f.session_id = s.id
                WHERE s.ended_at IS NOT NULL AND f.client_id = :client""", client=rp.client_id)}
    return expected


def drain(engine: sa.Engine, receiver: Receiver, rps: dict[str, Rp]) -> float:
    """Bounded wait until the outbox is empty and every expected notice has arrived."""
    started = time.monotonic()
    while time.monotonic() - started < DRAIN_SECONDS:
        pending = query(engine, "SELECT count(*) FROM logout_deliveries "
                                "WHERE delivered_at IS NULL AND given_up_at IS NULL")[0][0]
        received = receiver.by_client()
        expected = expected_notices(engine, rps)
        if not pending and all(sids <= set(received.get(client, ())) for client, sids in expected.items()):
            break
        time.sleep(0.5)
    return time.monotonic() - started


# Leftovers of races that no client can use, reported (not failed): a code the
# authorization endpoint saved while the session was ending (the exchange re-checks the
# session), and a session row whose activity was recorded by a request that began before
# the ending committed.
LEFTOVERS = {
    "codes left unused under ended sessions": """
        SELECT count(*) FROM authorization_codes c JOIN login_sessions s ON s.id = c.session_id
        WHERE s.ended_at IS NOT NULL AND c.used_at IS NULL""",
    "ended sessions written after their end": """
        SELECT count(*) FROM login_sessions s JOIN audit_events e ON e.session_id = s.id
            AND e.event IN ('session.ended', 'session.expired')
        WHERE s.xmin::text <> e.xmin::text""",
}

INVARIANTS = {
    # DESIGN invariant 2: ending a session revokes all its families in the same transaction.
    "active token family under an ended session": """
        SELECT f.id, f.client_id, s.id, s.end_reason FROM token_families f
        JOIN login_sessions s ON s.id = f.session_id
        WHERE s.ended_at IS NOT NULL AND f.revoked_at IS NULL""",
    # Rotation: one live refresh token per family, whatever happened to it.
    "family with two unrotated refresh tokens": """
        SELECT family_id, count(*) FROM refresh_tokens WHERE rotated_at IS NULL
        GROUP BY family_id HAVING count(*) > 1""",
    "active family without an unrotated refresh token (a rotation that issued nothing)": """
        SELECT f.id FROM token_families f JOIN login_sessions s ON s.id = f.session_id
        WHERE f.revoked_at IS NULL AND s.ended_at IS NULL AND NOT EXISTS (
            SELECT 1 FROM refresh_tokens r WHERE r.family_id = f.id AND r.rotated_at IS NULL)""",
    # Invariant 2, in commit order (request times cannot tell: one "now" per request). A
    # revoked family's row is last written by whatever revoked it; if that last writer also
    # issued one of its refresh tokens, a refresh committed after the revocation (after the
    # session ended): it answered 200 with tokens minted after the end, which resource
    # servers verifying JWTs offline accept until they expire (invariant 8).
    "tokens issued into a family after it was revoked (refresh after the session ended)": """
        SELECT f.id, f.revoke_reason, f.revoked_at, f.last_issued_at FROM token_families f
        WHERE f.revoked_at IS NOT NULL AND EXISTS (
            SELECT 1 FROM refresh_tokens r WHERE r.family_id = f.id
            AND r.xmin::text = f.xmin::text)""",
    "refresh token that outlives its session's maximum duration": """
        SELECT r.id FROM refresh_tokens r JOIN token_families f ON f.id = r.family_id
        JOIN login_sessions s ON s.id = f.session_id JOIN accounts a ON a.id = s.account_id
        WHERE r.expires_at > s.created_at + a.max_session_duration * interval '1 second'""",
    # The session's own record.
    "session ended without both ended_at and end_reason": """
        SELECT id, ended_at, end_reason FROM login_sessions
        WHERE (ended_at IS NULL) <> (end_reason IS NULL)""",
    "session with an unknown end reason or ended before it started": f"""
        SELECT id, end_reason FROM login_sessions WHERE ended_at IS NOT NULL AND (
            end_reason NOT IN ({", ".join(f"'{r}'" for r in sorted(END_REASONS))})
            OR ended_at < created_at)""",
    "revoked family without a reason (or a reason without revocation)": """
        SELECT id FROM token_families WHERE (revoked_at IS NULL) <> (revoke_reason IS NULL)""",
    "family of another user than its session's": """
        SELECT f.id FROM token_families f JOIN login_sessions s ON s.id = f.session_id
        WHERE f.user_id IS DISTINCT FROM s.user_id""",
    "session in another account than its user's": """
        SELECT s.id FROM login_sessions s JOIN users u ON u.id = s.user_id
        WHERE s.account_id <> u.account_id""",
    "session without exactly one 'started' audit event": """
        SELECT s.id, count(e.id) FROM login_sessions s
        LEFT JOIN audit_events e ON e.session_id = s.id AND e.event = 'session.started'
        GROUP BY s.id HAVING count(e.id) <> 1""",
    "ended session without exactly one 'ended' audit event (end is once)": """
        SELECT s.id, count(e.id) FROM login_sessions s
        LEFT JOIN audit_events e ON e.session_id = s.id
            AND e.event IN ('session.ended', 'session.expired')
        WHERE s.ended_at IS NOT NULL GROUP BY s.id HAVING count(e.id) <> 1""",
    # Invariant 4: the concurrent limit holds, even when logins race.
    "user above the concurrent-session limit": """
        SELECT s.user_id, count(*) FROM login_sessions s JOIN accounts a ON a.id = s.account_id
        WHERE a.max_concurrent_sessions IS NOT NULL AND s.ended_at IS NULL
        GROUP BY s.user_id, a.max_concurrent_sessions HAVING count(*) > a.max_concurrent_sessions""",
    # Invariant 6: secrets at rest are SHA-256 hashes.
    "secret stored other than as a SHA-256 hash": """
        SELECT 'session', id FROM login_sessions WHERE secret_hash !~ '^[0-9a-f]{64}$'
        UNION ALL SELECT 'refresh', id FROM refresh_tokens WHERE secret_hash !~ '^[0-9a-f]{64}$'
        UNION ALL SELECT 'code', id FROM authorization_codes WHERE secret_hash !~ '^[0-9a-f]{64}$'
        UNION ALL SELECT 'client', client_id FROM clients
            WHERE secret_hash IS NOT NULL AND secret_hash !~ '^[0-9a-f]{64}$'""",
    # The outbox: one notice per ended session and client holding tokens there, delivered once.
    "more than one logout notice for one session and client": """
        SELECT session_id, client_id, count(*) FROM logout_deliveries
        GROUP BY session_id, client_id HAVING count(*) > 1""",
    "logout notice not delivered (pending or given up)": """
        SELECT id, session_id, attempts, last_error FROM logout_deliveries
        WHERE delivered_at IS NULL OR given_up_at IS NOT NULL OR last_status <> 200""",
    "logout notice for a session that has not ended": """
        SELECT d.id FROM logout_deliveries d JOIN login_sessions s ON s.id = d.session_id
        WHERE s.ended_at IS NULL""",
    "logout notice to a client that held no tokens under the session": """
        SELECT d.id FROM logout_deliveries d WHERE NOT EXISTS (
            SELECT 1 FROM token_families f WHERE f.session_id = d.session_id
            AND f.client_id = d.client_id)""",
    "logout notice to a client without a back-channel URI": """
        SELECT d.id FROM logout_deliveries d JOIN clients c ON c.client_id = d.client_id
        WHERE c.backchannel_logout_uri IS NULL""",
    "ended session whose back-channel clients got no notice (lost)": """
        SELECT DISTINCT s.id, f.client_id FROM login_sessions s
        JOIN token_families f ON f.session_id = s.id
        JOIN clients c ON c.client_id = f.client_id AND c.backchannel_logout_uri IS NOT NULL
        WHERE s.ended_at IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM logout_deliveries d WHERE d.session_id = s.id
            AND d.client_id = f.client_id)""",
}


def check_database(engine: sa.Engine, load: Load) -> list[str]:
    failures = []
    for name, sql in INVARIANTS.items():
        rows = query(engine, sql)
        if rows:
            failures.append(f"{name}: {len(rows)} rows, e.g. {[tuple(r) for r in rows[:3]]}")
    # Every refresh token presented twice (on purpose) took its whole family with it.
    if load.reused_families:
        rows = query(engine, "SELECT id, revoke_reason FROM token_families WHERE id = ANY(:ids)",
                     ids=list(load.reused_families))
        bad = [tuple(r) for r in rows if r[1] is None]
        if bad or len(rows) != len(load.reused_families):
            failures.append(f"refresh token reused but its family not revoked: {bad[:3]}")
    # A session left out of its own token's active listing had been ended meanwhile.
    for sid, sent_at in load.unlisted_current:
        rows = query(engine, "SELECT ended_at FROM login_sessions WHERE id = :sid", sid=sid)
        ended_at = rows[0][0] if rows else None
        # (ended_at is the ending request's instant, which may precede this request's send)
        if ended_at is None or ended_at < sent_at - timedelta(seconds=30):
            failures.append(f"sessions API left out the token's own session {sid}, "
                            f"which {'is open' if ended_at is None else 'ended long before'}")
    # The client and the database agree on which sessions ended.
    ended = set(load.ended)
    if ended:
        rows = query(engine, "SELECT id FROM login_sessions WHERE id = ANY(:ids) AND ended_at IS NULL",
                     ids=list(ended))
        if rows:
            failures.append(f"sessions the provider said it ended are open: {[r[0] for r in rows[:3]]}")
    return failures


def check_notices(engine: sa.Engine, receiver: Receiver, rps: dict[str, Rp]) -> list[str]:
    failures = []
    received = receiver.by_client()
    for client_id, expected in expected_notices(engine, rps).items():
        got = received.get(client_id, Counter())
        lost = expected - set(got)
        extra = set(got) - expected
        duplicated = [sid for sid, n in got.items() if n > 1]
        if lost:
            failures.append(f"{len(lost)} logout tokens lost for client {client_id}: {sorted(lost)[:3]}")
        if extra:
            failures.append(f"{len(extra)} logout tokens for sessions that did not need one: "
                            f"{sorted(extra)[:3]}")
        if duplicated:
            failures.append(f"{len(duplicated)} sessions notified twice: {duplicated[:3]}")
    others = set(received) - {rp.client_id for rp in rps.values() if rp.backchannel}
    if others:
        failures.append(f"logout tokens for clients without a back-channel URI: {others}")
    if receiver.rejected:
        failures.append(f"{len(receiver.rejected)} invalid logout tokens: {receiver.rejected[:3]}")
    return failures


# -- the summary ---------------------------------------------------------------------------------


def summary(stats: Stats, engine: sa.Engine, receiver: Receiver, *, seconds: float, drained: float,
            checked: int, total: float) -> str:
    lines = [f"mixed load: {seconds:.0f} s, {THREADS} client threads, `idp serve --workers {WORKERS}` "
             f"(gunicorn gthread x4) + `idp worker`, PostgreSQL"]
    load_requests = stats.total() - stats.total("after:")
    statuses = Counter()
    for (kind, status), n in stats.counts.items():
        if not kind.startswith("after:"):
            statuses[status] += n
    lines.append(f"requests: {load_requests} in {seconds:.1f} s = {load_requests / seconds:.1f} req/s; "
                 f"by status {dict(sorted(statuses.items()))}; 5xx {len(stats.server_errors)}, "
                 f"dropped {len(stats.dropped)}")
    lines.append(f"  {'kind':<24}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}  statuses")
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for (kind, status), n in stats.counts.items():
        by_kind[kind][status] += n
    for kind in sorted(by_kind):
        samples = sorted(stats.latency.get(kind, [])) or [0.0]
        p50 = statistics.median(samples) * 1000
        p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))] * 1000
        lines.append(f"  {kind:<24}{sum(by_kind[kind].values()):>7}{p50:>9.0f}{p95:>9.0f}  "
                     f"{dict(sorted(by_kind[kind].items()))}")
    sessions = query(engine, "SELECT count(*), count(ended_at) FROM login_sessions")[0]
    reasons = dict(query(engine, "SELECT end_reason, count(*) FROM login_sessions "
                                 "WHERE ended_at IS NOT NULL GROUP BY end_reason ORDER BY 2 DESC"))
    lines.append(f"sessions: started {sessions[0]}, ended {sessions[1]} {reasons}, "
                 f"still active {sessions[0] - sessions[1]}")
    families = query(engine, "SELECT count(*), count(revoked_at) FROM token_families")[0]
    revoked = dict(query(engine, "SELECT revoke_reason, count(*) FROM token_families "
                                 "WHERE revoked_at IS NOT NULL GROUP BY revoke_reason ORDER BY 2 DESC"))
    refresh = query(engine, "SELECT count(*), count(rotated_at) FROM refresh_tokens")[0]
    lines.append(f"token families: {families[0]}, revoked {families[1]} {revoked}; refresh tokens "
                 f"issued {refresh[0]}, rotated {refresh[1]}")
    deliveries = query(engine, "SELECT count(*), count(delivered_at), coalesce(max(attempts), 0), "
                               "count(*) FILTER (WHERE attempts > 1) FROM logout_deliveries")[0]
    lines.append(f"back-channel: {deliveries[0]} notices, {deliveries[1]} delivered, "
                 f"{deliveries[3]} needed a retry (max attempts {deliveries[2]}); "
                 f"{len(receiver.receipts)} logout tokens received and verified, "
                 f"{len(receiver.rejected)} rejected; outbox drained {drained:.1f} s after the load")
    lines.append(f"outcomes: {dict(sorted(stats.outcomes.items()))}")
    lines.append("race leftovers (unusable, not failures): "
                 + ", ".join(f"{name} {query(engine, sql)[0][0]}" for name, sql in LEFTOVERS.items()))
    lines.append(f"after the load: tokens of {checked} ended sessions checked inactive; "
                 f"test took {total:.0f} s in all")
    return "\n".join(lines)


# -- the test ------------------------------------------------------------------------------------


def test_mixed_load_keeps_every_invariant(tmp_path):
    if not PG_URL:
        pytest.skip("mixed load runs on PostgreSQL: set IDP_TEST_DATABASE_URL (.ci/run does)")
    test_started = time.monotonic()
    database = load_database(PG_URL)
    stats = Stats()
    receiver = Receiver()
    engine = sa.create_engine(database)
    limits = {
        # One client IP sends everything: per-IP and per-client limits would only measure
        # the limiter (429 is not what this test is about).
        "IDP_LOGIN_IP_LIMIT": "1000000 per minute",
        "IDP_TOKEN_RATE_LIMIT": "1000000 per minute",
        "IDP_INTROSPECTION_RATE_LIMIT": "1000000 per minute",
    }
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        receiver_url = stack.enter_context(receiving(receiver))
        provider = stack.enter_context(serve(database, workers=WORKERS, env=limits))
        workers = provider.worker_pids()
        base = provider.url
        settings = {k.removeprefix("IDP_"): v for k, v in provider.env.items() if k.startswith("IDP_")}
        users, rps, api = seed(settings, receiver_url)
        worker = stack.enter_context(running("worker", [*IDP, "worker", "--interval", "1",
                                                        "--json"], provider.env, tmp_path))
        receiver.issuer = base
        receiver.clients = {rp.name: rp.client_id for rp in rps.values() if rp.backchannel}
        receiver.jwks()
        load = Load(base, users, rps, api, stats)
        stack.callback(load.close)
        receiver.on_logout = load.mark_ended

        started = time.monotonic()
        deadline = started + LOAD_SECONDS
        threads = [threading.Thread(target=load.run, args=(deadline,), name=f"load-{i}", daemon=True)
                   for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()) + 180)
        seconds = time.monotonic() - started
        assert not any(t.is_alive() for t in threads), "load threads did not stop"

        drained = drain(engine, receiver, rps)
        checked = check_ended_sessions_client_side(load, stats)
        failures = check_notices(engine, receiver, rps) + check_database(engine, load)
        assert provider.process.poll() is None, f"idp serve died:\n{provider.log_tail()}"
        assert worker.poll() is None, "idp worker died"
        assert provider.worker_pids() == workers, (
            f"gunicorn replaced a worker during the load ({workers} -> {provider.worker_pids()}):\n"
            f"{provider.log_tail()}")
        report = summary(stats, engine, receiver, seconds=seconds, drained=drained, checked=checked,
                         total=time.monotonic() - test_started)
        print("\n" + report)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "mixed-load-summary.txt").write_text(report + "\n")

        problems = []
        if stats.server_errors:
            problems.append(f"{len(stats.server_errors)} responses were 5xx, e.g.:\n  "
                            + "\n  ".join(stats.server_errors[:5])
                            + "\n server log:\n  " + "\n  ".join(server_errors_in(provider.log_path)))
        if stats.dropped:
            problems.append(f"{len(stats.dropped)} requests got no answer, e.g. {stats.dropped[:3]}")
        if stats.harness_errors:
            problems.append("the load itself failed:\n" + "\n".join(stats.harness_errors[:3]))
        if stats.violations:
            problems.append(f"{len(stats.violations)} violations seen by the clients, e.g.:\n  "
                            + "\n  ".join(stats.violations[:8]))
        problems += failures
        assert not problems, "\n".join(problems)
    # Passed: the database has served its purpose (a failed run keeps it for a post-mortem).
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(
                f'DROP DATABASE IF EXISTS "{sa.engine.make_url(database).database}" WITH (FORCE)'))
    finally:
        admin.dispose()
