"""`idp`, the operator's tool, run as a real process through its console script.

The contract: with --json every command prints exactly one JSON object on stdout;
bad input exits non-zero with ONE line on stderr (``idp: ...``), never a traceback;
usage mistakes exit 2, other failures 1. Each test gets its own SQLite database and
keys directory through IDP_INSTANCE_DIR / IDP_KEYS_DIR. A process costs about a
second (imports), so one initialised directory is made per module and copied, and
the many one-line-error cases run concurrently in one batch.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.flows import start_session

_VENV_IDP = Path(sys.executable).parent / "idp"
IDP = str(_VENV_IDP) if _VENV_IDP.exists() else shutil.which("idp")
TIMEOUT = 60
FAST_ARGON2 = {"IDP_ARGON2_TIME_COST": "1", "IDP_ARGON2_MEMORY_COST": "1024",
               "IDP_ARGON2_PARALLELISM": "1"}
PASSWORD = "correct horse battery staple"
TAKEN_EMAIL = "taken@example.com"
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


# -- running the console script --------------------------------------------------------


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any IDP_* setting, pointed at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(IDP_INSTANCE_DIR=str(home / "instance"), IDP_KEYS_DIR=str(home / "keys"),
               **FAST_ARGON2)
    env.update(extra)
    return env


def idp(home: Path, *args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess:
    assert IDP, "the idp console script is not installed"
    return subprocess.run([IDP, *args], input=stdin, capture_output=True, text=True,
                          env=env_for(home, **extra), timeout=TIMEOUT)


def one_json_object(result: subprocess.CompletedProcess) -> dict:
    """Success: exit 0, no traceback, stdout is exactly one JSON object on one line."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1, result.stdout
    data = json.loads(result.stdout)  # raises on trailing data: exactly one value
    assert isinstance(data, dict), result.stdout
    return data


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("idp: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def csrf_token(html: str) -> str:
    match = CSRF.search(html)
    assert match, html[:300]
    return match.group(1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def query(home: Path, sql: str, *params) -> list[sqlite3.Row]:
    conn = sqlite3.connect(home / "instance" / "idp.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def in_process_app(home: Path, clock=None):
    """The same database and keys as the CLI, for setting up rows and reading them back."""
    from idp import create_app

    return create_app({"INSTANCE_DIR": home / "instance", "KEYS_DIR": home / "keys",
                       "DATABASE_URL": f"sqlite:///{home / 'instance' / 'idp.db'}",
                       "ISSUER": "http://127.0.0.1:5000", "ARGON2_TIME_COST": 1,
                       "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}, clock=clock)


def dispose(app) -> None:
    from idp.models import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


# -- directories --------------------------------------------------------------------------


@dataclass
class Initialised:
    home: Path
    output: dict


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Initialised:
    """`idp init --json` once per module; never modified afterwards (tests copy it)."""
    home = tmp_path_factory.mktemp("cli-template")
    return Initialised(home, one_json_object(idp(home, "init", "--json")))


def copy_home(template: Initialised, target: Path) -> Path:
    shutil.copytree(template.home, target, symlinks=True)
    return target


@pytest.fixture
def home(template, tmp_path) -> Path:
    """A private copy of the initialised directory: empty database, one key per alg."""
    return copy_home(template, tmp_path / "home")


@pytest.fixture(scope="module")
def shared(template, tmp_path_factory) -> Path:
    """One initialised directory shared by the module, with account "acme" and a user."""
    from idp import accounts
    from idp.models import db

    path = copy_home(template, tmp_path_factory.mktemp("cli-shared") / "home")
    app = in_process_app(path)
    with app.app_context():
        services = app.extensions["idp"]
        account = accounts.create_account("acme", now=services.clock.now(),
                                          max_duration=24 * 3600, idle_timeout=2 * 3600)
        accounts.create_user(account, email=TAKEN_EMAIL, password=PASSWORD, role="member",
                             name=None, hasher=services.passwords, now=services.clock.now())
        db.session.commit()
    dispose(app)
    return path


# -- init ------------------------------------------------------------------------------------


def test_init_migrates_to_head_and_writes_private_keys(template):
    from alembic.script import ScriptDirectory

    from idp import MIGRATIONS_DIR

    home, out = template.home, template.output
    assert set(out) == {"database", "keys_dir", "keys"}
    assert out["database"] == f"sqlite:///{(home / 'instance' / 'idp.db').resolve()}"
    assert Path(out["keys_dir"]) == (home / "keys").resolve()

    head = ScriptDirectory(MIGRATIONS_DIR).get_current_head()
    assert [r[0] for r in query(home, "SELECT version_num FROM alembic_version")] == [head]
    assert query(home, "SELECT count(*) FROM accounts")[0][0] == 0

    keys = home / "keys"
    assert mode(keys) == 0o700
    pems = sorted(keys.glob("*.pem"))
    assert sorted(p.stem for p in pems) == sorted(out["keys"])
    assert {kid.split("-")[0] for kid in out["keys"]} == {"rs", "es"}
    for pem in pems:
        assert mode(pem) == 0o600, pem
        assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert mode(keys / "keys.json") == 0o600


def test_init_again_is_a_no_op_that_keeps_the_keys(template, home):
    out = one_json_object(idp(home, "init", "--json"))
    assert sorted(out["keys"]) == sorted(template.output["keys"])
    assert sorted(p.stem for p in (home / "keys").glob("*.pem")) == sorted(out["keys"])


# -- create-account / create-user ----------------------------------------------------------


def test_create_account_prints_name_and_id(shared):
    out = one_json_object(idp(shared, "create-account", "  Globex  ", "--json"))
    assert set(out) == {"account", "id"}
    assert out["account"] == "Globex"
    assert isinstance(out["id"], int)
    rows = query(shared, "SELECT id, max_session_duration, idle_timeout FROM accounts "
                         "WHERE name = ?", "Globex")
    assert [tuple(r) for r in rows] == [(out["id"], 24 * 3600, 2 * 3600)]


def test_create_user_reads_the_password_from_stdin(shared):
    from idp import passwords

    result = idp(shared, "create-user", "--account", "acme", "--email", " Ada@Example.COM ",
                 "--role", "owner", "--name", "Ada Lovelace", "--password-stdin", "--json",
                 stdin=PASSWORD + "\n")
    out = one_json_object(result)
    assert set(out) == {"sub", "email", "email_verified"}
    assert out["email"] == "ada@example.com" and out["email_verified"] is False
    # Not vouched for by the operator: the address is sent a link to verify it.
    [mail] = query(shared, "SELECT m.kind, l.purpose FROM mail_outbox m JOIN email_links l "
                           "ON l.id = m.link_id WHERE m.to_address = ?", "ada@example.com")
    assert tuple(mail) == ("verify_email", "verify_email")
    [row] = query(shared, "SELECT u.sub, u.role, u.name, u.password_hash, a.name AS account "
                          "FROM users u JOIN accounts a ON a.id = u.account_id WHERE email = ?",
                  "ada@example.com")
    assert (row["sub"], row["role"], row["name"], row["account"]) == (
        out["sub"], "owner", "Ada Lovelace", "acme")
    assert PASSWORD not in row["password_hash"]
    hasher = passwords.Passwords(passwords.make_hasher(1, 1024, 1))
    assert hasher.verify(row["password_hash"], PASSWORD)[0]


# -- create-client ---------------------------------------------------------------------------


def test_create_client_shows_the_secret_once_and_stores_only_its_hash(shared):
    result = idp(shared, "create-client", "--name", "Photos",
                 "--redirect-uri", "https://photos.example.com/cb",
                 "--redirect-uri", "http://127.0.0.1:8765/cb",
                 "--redirect-uri", "com.example.photos:/cb",
                 "--post-logout-redirect-uri", "https://photos.example.com/",
                 "--backchannel-logout-uri", "https://photos.example.com/bc-logout",
                 "--first-party", "--resource-server", "--scope", "openid email",
                 "--id-token-alg", "ES256", "--json")
    out = one_json_object(result)
    assert set(out) == {"client_id", "client_secret"}
    secret = out["client_secret"]
    assert isinstance(secret, str) and len(secret) >= 32

    [row] = query(shared, "SELECT * FROM clients WHERE client_id = ?", out["client_id"])
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for value in tuple(row):
        assert secret not in str(value)
    # Nor anywhere in the database files (the WAL included).
    for path in (shared / "instance").glob("idp.db*"):
        assert secret.encode() not in path.read_bytes(), path
    assert json.loads(row["redirect_uris"]) == [
        "https://photos.example.com/cb", "http://127.0.0.1:8765/cb", "com.example.photos:/cb"]
    assert json.loads(row["post_logout_redirect_uris"]) == ["https://photos.example.com/"]
    assert row["backchannel_logout_uri"] == "https://photos.example.com/bc-logout"
    assert (row["name"], row["scope"], row["id_token_signed_response_alg"]) == (
        "Photos", "openid email", "ES256")
    assert row["first_party"] and row["resource_server"]


def test_create_client_public_has_a_null_secret(shared):
    out = one_json_object(idp(shared, "create-client", "--name", "SPA", "--public",
                              "--redirect-uri", "http://localhost:3000/cb", "--json"))
    assert set(out) == {"client_id", "client_secret"}
    assert out["client_secret"] is None
    [row] = query(shared, "SELECT secret_hash, first_party, resource_server FROM clients "
                          "WHERE client_id = ?", out["client_id"])
    assert tuple(row) == (None, 0, 0)


# -- rotate-keys / sweep ---------------------------------------------------------------------


def test_rotate_keys_publishes_new_keys_beside_the_old(template, home):
    old = set(template.output["keys"])
    before = datetime.now(UTC)
    out = one_json_object(idp(home, "rotate-keys", "--json"))
    assert set(out) == {"new", "published", "signs_from"}
    # Relying parties may keep the JWKS 5 minutes; other nodes notice within 30 s.
    delay = datetime.fromisoformat(out["signs_from"]) - before
    assert timedelta(minutes=5, seconds=30) <= delay < timedelta(minutes=6)
    new = set(out["new"])
    assert len(new) == 2 and {k.split("-")[0] for k in new} == {"rs", "es"}
    assert not new & old
    assert set(out["published"]) == old | new
    assert len(out["published"]) == len(set(out["published"]))
    keys = home / "keys"
    assert mode(keys) == 0o700
    for kid in old | new:
        assert mode(keys / f"{kid}.pem") == 0o600, kid


def test_sweep_on_an_empty_database(home):
    out = one_json_object(idp(home, "sweep", "--json"))
    assert out == {"expired": 0, "purged": 0, "spent": 0}


def test_sweep_expires_stale_sessions_and_purges_old_history(home):
    import sqlalchemy as sa

    from idp import accounts, sessions
    from idp.models import (
        DeviceCode,
        EndReason,
        LoginSession,
        PasskeyChallenge,
        RevokedAccessToken,
        UsedAssertion,
        db,
    )

    now = datetime.now(UTC).replace(microsecond=0)
    origin = sessions.Origin(ip="127.0.0.1")
    app = in_process_app(home)
    with app.app_context():
        account = accounts.create_account("sweepco", now=now - timedelta(days=41),
                                          max_duration=24 * 3600, idle_timeout=2 * 3600)
        user = accounts.create_user(account, email="s@example.com", password=PASSWORD,
                                    role="member", name=None,
                                    hasher=app.extensions["idp"].passwords,
                                    now=now - timedelta(days=41), verified=True)
        ancient = start_session(user, origin, now=now - timedelta(days=40)).session
        sessions.end(ancient, EndReason.LOGOUT, now=now - timedelta(days=40), actor="test")
        stale = start_session(user, origin, now=now - timedelta(days=3)).session
        live = start_session(user, origin, now=now - timedelta(minutes=1)).session
        ids = ancient.id, stale.id, live.id
        # Spent rows: a device code expired two hours ago (and one still pending), a used
        # client assertion and an access-token revocation past their expiry.
        client, _ = accounts.create_client(name="cli", redirect_uris=[], public=True,
                                           device=True, now=now)
        for code, expires in (("OLDX-CODE", now - timedelta(hours=2)),
                              ("LIVE-CODE", now + timedelta(minutes=5))):
            db.session.add(DeviceCode(id=code, secret_hash="0" * 64, user_code=code,
                                      client_id=client.client_id, scope="openid",
                                      created_at=expires - timedelta(minutes=10),
                                      expires_at=expires, interval=5, ip="127.0.0.1"))
        db.session.add(UsedAssertion(key="c:j1", expires_at=now - timedelta(minutes=1)))
        db.session.add(UsedAssertion(key="c:j2", expires_at=now + timedelta(minutes=1)))
        db.session.add(RevokedAccessToken(jti="j1", family_id="f", revoked_at=now,
                                          expires_at=now - timedelta(minutes=1)))
        for ceremony, expires in (("old", now - timedelta(minutes=1)),
                                  ("new", now + timedelta(minutes=4))):
            db.session.add(PasskeyChallenge(id=ceremony, challenge="c", purpose="sign_in",
                                            expires_at=expires))
        db.session.commit()
    dispose(app)

    out = one_json_object(idp(home, "sweep", "--json"))
    assert out == {"expired": 1, "purged": 1, "spent": 4}

    app = in_process_app(home)
    with app.app_context():
        assert db.session.get(LoginSession, ids[0]) is None
        stale = db.session.get(LoginSession, ids[1])
        assert stale.ended_at is not None and EndReason(stale.end_reason).is_expiry
        assert db.session.get(LoginSession, ids[2]).ended_at is None
        assert [row.id for row in db.session.scalars(sa.select(DeviceCode))] == ["LIVE-CODE"]
        assert [row.key for row in db.session.scalars(sa.select(UsedAssertion))] == ["c:j2"]
        assert db.session.scalars(sa.select(RevokedAccessToken)).all() == []
        assert [row.id for row in db.session.scalars(sa.select(PasskeyChallenge))] == ["new"]
    dispose(app)


# -- bad input: one line on stderr, no traceback ------------------------------------------------


@dataclass
class Case:
    args: list[str]
    code: int
    needles: tuple[str, ...]
    stdin: str = PASSWORD + "\n"
    env: dict[str, str] = field(default_factory=dict)  # "{scratch}"/"{shared}" expanded


def _user(email: str, *, account: str = "acme", stdin: str = PASSWORD + "\n", needle: str) -> Case:
    return Case(["create-user", "--account", account, "--email", email, "--password-stdin",
                 "--json"], 1, (needle,), stdin=stdin)


def _client(*extra: str, needles: tuple[str, ...], code: int = 1) -> Case:
    return Case(["create-client", "--name", "rejected", *extra, "--json"], code, needles)


HTTPS_CB = ("--redirect-uri", "https://app.example.com/cb")

CASES: dict[str, Case] = {
    # usage mistakes: exit 2, the message names the option and points at --help
    "unknown-option": Case(["create-account", "x", "--bogus", "--json"], 2,
                           ("--bogus", "idp create-account --help")),
    "unknown-command": Case(["frobnicate", "--json"], 2, ("frobnicate",)),
    "missing-required-option": Case(["create-user", "--email", "a@example.com",
                                     "--password-stdin", "--json"], 2, ("--account",)),
    "bad-role": Case(["create-user", "--account", "acme", "--email", "r@example.com",
                      "--role", "god", "--password-stdin", "--json"], 2, ("--role", "god")),
    "bad-id-token-alg": _client(*HTTPS_CB, "--id-token-alg", "HS256", code=2,
                                needles=("--id-token-alg",)),
    # accounts
    "duplicate-account": Case(["create-account", "acme", "--json"], 1,
                              ("acme", "already exists")),
    "duplicate-account-padded": Case(["create-account", "  acme ", "--json"], 1,
                                     ("already exists",)),
    "empty-account-name": Case(["create-account", " ", "--json"], 1, ("1 to 120",)),
    # users
    "unknown-account": _user("u1@example.com", account="nosuch", needle="no account named 'nosuch'"),
    "short-password": _user("u2@example.com", stdin="short7c\n", needle="at least 8"),
    "bad-email": _user("not-an-email", needle="not an email address"),
    "duplicate-email": _user("Taken@Example.com", needle="already exists"),
    # clients
    "http-redirect-uri": _client("--redirect-uri", "http://app.example.com/cb",
                                 needles=("https", "http://app.example.com/cb")),
    "http-localhost-lookalike": _client("--redirect-uri", "http://localhost.example.com/cb",
                                        needles=("https",)),
    "fragment-redirect-uri": _client("--redirect-uri", "https://app.example.com/cb#x",
                                     needles=("fragment",)),
    "relative-redirect-uri": _client("--redirect-uri", "/cb", needles=("not an acceptable URI",)),
    "javascript-redirect-uri": _client("--redirect-uri", "javascript:alert(1)",
                                       needles=("not an acceptable URI",)),
    "http-post-logout-uri": _client(*HTTPS_CB, "--post-logout-redirect-uri", "http://example.org/",
                                    needles=("post-logout",)),
    "no-redirect-uri": _client(needles=("--redirect-uri",)),
    "public-resource-server": _client(*HTTPS_CB, "--public", "--resource-server",
                                      needles=("--public",)),
    "unknown-scope": _client(*HTTPS_CB, "--scope", "openid superpowers", needles=("superpowers",)),
    # configuration
    "insecure-cookies-on-https-issuer": Case(
        ["init", "--json"], 1, ("IDP_INSECURE_COOKIES",),
        env={"IDP_INSECURE_COOKIES": "1", "IDP_ISSUER": "https://id.example.com"}),
    "bad-integer-setting": Case(["init", "--json"], 1, ("IDP_ARGON2_TIME_COST",),
                                env={"IDP_ARGON2_TIME_COST": "lots"}),
    # the operator's environment: keys directory and database
    "keys-dir-is-a-file": Case(["init", "--json"], 1, ("not a directory",),
                               env={"IDP_KEYS_DIR": "{scratch}/a-file"}),
    "key-file-readable-by-others": Case(["rotate-keys", "--json"], 1, ("chmod 600",),
                                        env={"IDP_KEYS_DIR": "{scratch}/open-keys"}),
    "database-not-initialised": Case(["create-account", "newco", "--json"], 1, (),
                                     env={"IDP_INSTANCE_DIR": "{scratch}/never-initialised"}),
    "database-path-unusable": Case(["init", "--json"], 1, (),
                                   env={"IDP_DATABASE_URL": "sqlite:///{scratch}/a-file/idp.db"}),
}


@pytest.fixture(scope="module")
def scratch(template, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-scratch")
    (path / "a-file").write_text("not a directory\n")
    shutil.copytree(template.home / "keys", path / "open-keys")
    next((path / "open-keys").glob("rs-*.pem")).chmod(0o644)
    return path


@pytest.fixture(scope="module")
def bad_input_results(shared, scratch) -> dict[str, subprocess.CompletedProcess]:
    """Every case of CASES, run concurrently (each process is mostly import time)."""

    def run(case: Case) -> subprocess.CompletedProcess:
        env = {k: v.format(scratch=scratch, shared=shared) for k, v in case.env.items()}
        return idp(shared, *case.args, stdin=case.stdin, **env)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run, case) for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_line(name, bad_input_results):
    case = CASES[name]
    assert_one_line_error(bad_input_results[name], case.code, *case.needles)


def test_failed_commands_changed_nothing(shared, scratch, bad_input_results):
    assert query(shared, "SELECT count(*) FROM clients WHERE name = 'rejected'")[0][0] == 0
    assert query(shared, "SELECT count(*) FROM accounts WHERE name IN ('x', 'newco', '')")[0][0] == 0
    assert query(shared, "SELECT email FROM users WHERE email LIKE 'u%@example.com' "
                         "OR email = 'not-an-email' OR email = 'r@example.com'") == []
    assert query(shared, "SELECT count(*) FROM accounts WHERE name = 'acme'")[0][0] == 1
    assert (scratch / "a-file").read_text() == "not a directory\n"


def test_no_arguments_prints_the_help(tmp_path):
    result = idp(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for command in ("init", "serve", "create-account", "create-user", "create-client",
                    "rotate-keys", "sweep"):
        assert command in result.stdout, result.stdout


# -- serve ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """`idp serve --json` in its own process group; stdout/stderr go to files."""

    def __init__(self, home: Path, logs: Path, **extra: str):
        self.port = free_port()
        self.out = logs / f"serve-{self.port}.out"
        self.err = logs / f"serve-{self.port}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.process = subprocess.Popen(
                [IDP, "serve", "--json", "--port", str(self.port), "--workers", "1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env_for(home, **extra),
                start_new_session=True)
        self.deadline = time.monotonic() + 30

    def first_line(self) -> dict:
        while time.monotonic() < self.deadline:
            text = self.out.read_text()
            if "\n" in text:
                return json.loads(text.split("\n", 1)[0])
            assert self.process.poll() is None, self.err.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no JSON line within 30 s: {self.err.read_text()}")

    def wait_ready(self, url: str) -> None:
        while time.monotonic() < self.deadline:
            assert self.process.poll() is None, self.err.read_text()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not serving within 30 s: {self.err.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


@pytest.mark.e2e
def test_serve_creates_a_working_demo_once(home, tmp_path):
    # (The new-device notice is sent at once instead of after 15 s, so the worker that
    # `idp serve` starts writes it within its 5-s poll.)
    server = Served(home, tmp_path, IDP_NOTICE_DELAY="0s")
    try:
        first = server.first_line()
        assert set(first) == {"serving", "demo", "mail"}
        mail_folder = home / "instance" / "mail"
        assert first["mail"] == f"email is written to {mail_folder} (set IDP_SMTP_URL to send it)"
        assert first["serving"] == f"http://127.0.0.1:{server.port}"
        demo = first["demo"]
        assert {"issuer", "user", "password", "client_id", "client_secret",
                "redirect_uri"} <= set(demo)
        issuer = f"http://localhost:{server.port}"
        assert demo["issuer"] == issuer
        assert all(isinstance(demo[k], str) and demo[k] for k in demo)

        discovery = f"{issuer}/.well-known/openid-configuration"
        server.wait_ready(discovery)
        metadata = httpx.get(discovery, timeout=10).json()
        assert metadata["issuer"] == issuer

        with httpx.Client(base_url=issuer, timeout=10) as browser:
            page = browser.get("/login")
            assert page.status_code == 200
            wrong = browser.post("/login", data={"csrf_token": csrf_token(page.text),
                                                 "email": demo["user"], "password": "x" * 12})
            assert wrong.status_code == 401
            signed_in = browser.post("/login", data={"csrf_token": csrf_token(wrong.text),
                                                     "email": demo["user"],
                                                     "password": demo["password"]})
            assert signed_in.status_code == 303, signed_in.text[:300]
            location = signed_in.headers["location"]
            assert location.startswith(("/account", f"{issuer}/account")), location
            account_page = browser.get(location)
            assert account_page.status_code == 200
            assert demo["user"] in account_page.text

        # That browser was new to the demo user: the worker beside the server writes the
        # notice to the printed folder (polled, bounded: the worker passes every 5 s).
        deadline = time.monotonic() + 30
        while not list(mail_folder.glob("*.eml")) and time.monotonic() < deadline:
            assert server.process.poll() is None, server.err.read_text()
            time.sleep(0.2)
        [notice] = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                    for p in mail_folder.glob("*.eml")]
        assert notice["To"] == demo["user"]
        assert notice["Subject"] == "New sign-in to your localhost account"
        text = notice.get_body(("plain",)).get_content()
        assert f"{issuer}/not-me/" in text
        assert "Where:     This computer (IP address 127.0.0.1)" in text
        assert "Signed in to: your account page" in text

        # A keep-alive connection is closed after IDP_KEEPALIVE_REQUESTS answers (100), so
        # long-lived connections move between workers.
        with httpx.Client(base_url=issuer, timeout=10) as client:
            seen = [client.get("/healthz").headers.get("connection") for _ in range(101)]
        assert seen[:99] == ["keep-alive"] * 99 and seen[99] == "close", seen[95:]
        assert seen[100] == "keep-alive"  # the next connection starts counting again

        # The printed secret authenticates the client: a bogus code is then the only problem.
        token = {"grant_type": "authorization_code", "code": "bogus",
                 "redirect_uri": demo["redirect_uri"]}
        good = httpx.post(metadata["token_endpoint"], data=token, timeout=10,
                          auth=(demo["client_id"], demo["client_secret"]))
        assert good.json().get("error") == "invalid_grant", good.text
        bad = httpx.post(metadata["token_endpoint"], data=token, timeout=10,
                         auth=(demo["client_id"], "not-the-secret"))
        assert bad.json().get("error") == "invalid_client", bad.text
    finally:
        server.stop()

    again = Served(home, tmp_path)
    try:
        second = again.first_line()
        assert second == {"serving": f"http://127.0.0.1:{again.port}", "demo": None,
                          "mail": first["mail"]}
    finally:
        again.stop()
    assert query(home, "SELECT count(*) FROM accounts")[0][0] == 1
    assert query(home, "SELECT count(*) FROM clients")[0][0] == 1
