"""Fixtures: an app per test on SQLite and on PostgreSQL, a clock that tests move,
builders for accounts/users/clients, and a real HTTP server on a loopback port.

PostgreSQL runs when IDP_TEST_DATABASE_URL names a database the tests may wipe
(``.ci/run`` sets it); otherwise those variants are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from idp import MIGRATIONS_DIR, accounts, create_app
from idp.clock import FrozenClock
from idp.models import db

PG_URL = os.environ.get("IDP_TEST_DATABASE_URL")


def redis_up() -> bool:
    """The machine's Redis on 127.0.0.1:6379 (CI has one; a fresh machine may not)."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.3):
            return True
    except OSError:
        return False

PASSWORD = "correct horse battery staple"
#: A strong key (a weak one refuses to start: idp.config.secret_bits).
SECRET_KEY = "ljKOcScGN8JMc6xnh5rVBi-3VOi_FdjKyvhwnmIp-Iw"
FAST_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}


@dataclass
class Backend:
    kind: str
    url: str
    template: str | None = None


def _migrate(url: str, instance, keys) -> None:
    from flask_migrate import upgrade

    app = create_app({"DATABASE_URL": url, "INSTANCE_DIR": instance, "KEYS_DIR": keys,
                      "SECRET_KEY": SECRET_KEY, **FAST_ARGON2})
    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
        db.engine.dispose()


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request, tmp_path_factory, keys_dir) -> Backend:
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        template = base / "template.db"
        _migrate(f"sqlite:///{template}", base, keys_dir)
        return Backend("sqlite", "", str(template))
    if not PG_URL:
        pytest.skip("PostgreSQL variant: set IDP_TEST_DATABASE_URL to run it (.ci/run does)")
    url = _worker_database(PG_URL)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    _migrate(url, base, keys_dir)
    return Backend("postgresql", url)


def _worker_database(url: str) -> str:
    """Under pytest-xdist each worker gets a database of its own (``test_gw0``, …)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    parsed = sa.engine.make_url(url)
    name = f"{parsed.database}_{worker}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                              {"n": name}).scalar()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def clock() -> FrozenClock:
    # Real "now" so that independent clients checking exp against wall time agree.
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings(backend, tmp_path, keys_dir) -> dict:
    if backend.kind == "sqlite":
        path = tmp_path / "idp.db"
        shutil.copyfile(backend.template, path)
        url = f"sqlite:///{path}"
    else:
        url = backend.url
    return {
        "DATABASE_URL": url,
        "INSTANCE_DIR": tmp_path,
        "KEYS_DIR": keys_dir,
        "SECRET_KEY": SECRET_KEY,
        "ISSUER": "http://127.0.0.1:5000",
        **FAST_ARGON2,
    }


def _truncate() -> None:
    tables = [t.name for t in reversed(db.metadata.sorted_tables)]
    db.session.remove()
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def app(settings, clock, backend):
    app = create_app(settings, clock=clock)
    yield app
    with app.app_context():
        if backend.kind == "postgresql":
            _truncate()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield app
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_account(app, clock):
    def make(name: str = "acme", **policy):
        with app.app_context():
            account = accounts.create_account(
                name, now=clock.now(), max_duration=24 * 3600, idle_timeout=2 * 3600
            )
            for key, value in policy.items():
                setattr(account, key, value)
            db.session.commit()
            return account.id

    return make


@pytest.fixture
def make_user(app, clock, make_account):
    def make(email: str = "ada@example.com", *, account_id: int | None = None,
             role: str = "member", name: str = "Ada Lovelace", password: str = PASSWORD,
             verified: bool = True):
        with app.app_context():
            from idp.models import Account

            if account_id is None:
                existing = db.session.scalar(sa.select(Account.id).limit(1))
                account_id = existing or make_account()
            account = db.session.get(Account, account_id)
            user = accounts.create_user(
                account, email=email, password=password, role=role, name=name,
                hasher=app.extensions["idp"].passwords, now=clock.now(), verified=verified,
            )
            db.session.commit()
            return user.sub

    return make


@dataclass
class RegisteredClient:
    client_id: str
    client_secret: str | None
    redirect_uri: str


@pytest.fixture
def make_client(app, clock):
    def make(name: str = "Photos", *, redirect_uri: str = "http://127.0.0.1:9999/callback",
             public: bool = False, first_party: bool = True, **kwargs) -> RegisteredClient:
        with app.app_context():
            client, secret = accounts.create_client(
                name=name, redirect_uris=[redirect_uri], public=public, first_party=first_party,
                now=clock.now(), **kwargs,
            )
            db.session.commit()
            return RegisteredClient(client.client_id, secret, redirect_uri)

    return make


class _Dispatch:
    """Lets the server bind first (to learn its port) and get its app afterwards."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@dataclass
class LiveServer:
    url: str
    app: object
    clock: FrozenClock


def _serve(settings, clock, backend, host_name: str):
    dispatch = _Dispatch()
    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    url = f"http://{host_name}:{server.server_port}"
    app = create_app({**settings, "ISSUER": url}, clock=clock)
    dispatch.app = app
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield LiveServer(url, app, clock)
    server.shutdown()
    thread.join(timeout=5)
    with app.app_context():
        if backend.kind == "postgresql":
            _truncate()
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def live_server(settings, clock, backend):
    """A real threaded HTTP server on a loopback port, sharing the test's clock and DB."""
    yield from _serve(settings, clock, backend, "127.0.0.1")


@pytest.fixture
def localhost_server(settings, clock, backend):
    """The same, with the issuer named ``localhost`` (browsers refuse passkeys on an IP)."""
    yield from _serve(settings, clock, backend, "localhost")


# -- a real SMTP server on a loopback port (aiosmtpd), for the provider's email ------------


class Inbox:
    """An aiosmtpd handler keeping every message it accepts, parsed."""

    def __init__(self):
        self.messages: list = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        import email
        import email.policy

        with self.lock:
            self.messages.append(email.message_from_bytes(envelope.content,
                                                          policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def inbox(smtp_port):
    """The mail server at ``smtp_port`` (a test sets ``SMTP_URL`` to it)."""
    from aiosmtpd.controller import Controller

    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    yield handler
    controller.stop()


def race(app, work, *, refused: type[Exception] | tuple = ()) -> list:
    """``work()`` in two threads released together by a barrier, each in its own app
    context and transaction (committed); what each returned, or "refused" for ``refused``."""
    barrier, answers = threading.Barrier(2), []

    def run():
        with app.app_context():
            barrier.wait(10)
            try:
                answers.append(work())
                db.session.commit()
            except refused:
                db.session.rollback()
                answers.append("refused")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers
