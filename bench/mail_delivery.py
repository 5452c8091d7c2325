"""Email: how fast the worker delivers new-device notices, and what a notice adds to a
sign-in. In process (no HTTP server), on SQLite in a fresh folder or on a PostgreSQL
database the run wipes:

1. **SMTP.** An aiosmtpd server on a loopback port (as the tests' ``inbox`` fixture);
   the app has ``SMTP_URL=smtp://127.0.0.1:<port>?starttls=no`` and ``NOTICE_DELAY=0s``.
   ``--users`` users with verified addresses each sign in from a new browser
   (``sessions.start`` with a device marker: the notice is written to the outbox in the
   sign-in's transaction), then ``Mailer.run_due`` passes are timed until the outbox is
   empty: messages per second, wall time per message, and p50/p99 of the attempts' own
   durations (``mail_attempts.duration_ms``: the transport alone, whole milliseconds).
   Every message must reach the server exactly once (one per user, no duplicate ids).
2. **Folder.** The same without ``SMTP_URL``: one ``.eml`` per message in the instance's
   ``mail`` folder.
3. **Sign-in cost.** ``sessions.start`` and its commit, timed for a sign-in from a new
   browser (writes the notice and its link) against one from a browser the user has
   signed in with before (no notice), ``--sign-ins`` of each, interleaved on the same
   users (which goes first alternates); the first 20 of each warm up and are not counted.

Users are made with a cheap argon2 (as the tests do): password hashing is not measured.

    .venv/bin/python bench/mail_delivery.py [--users 500] [--sign-ins 300] [--json]
    .venv/bin/python bench/mail_delivery.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test_h4
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import click
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import free_port  # noqa: E402

#: A strong key (a weak one refuses to start), and argon2 as cheap as the tests make it.
SECRET_KEY = "ljKOcScGN8JMc6xnh5rVBi-3VOi_FdjKyvhwnmIp-Iw"
FAST_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 1024, "ARGON2_PARALLELISM": 1}
PASSWORD = "correct horse battery staple"
WARMUP = 20


class Inbox:
    """An aiosmtpd handler counting what it accepts (as ``tests.conftest.Inbox``)."""

    def __init__(self):
        self.messages: list = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        import email
        import email.policy

        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(parsed)
        return "250 OK"


@contextmanager
def smtp_server():
    from aiosmtpd.controller import Controller

    handler, port = Inbox(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 3),
            "mean_ms": round(statistics.fmean(values), 3)}


def make_app(workdir: Path, database_url: str | None, name: str, smtp_url: str | None):
    """A fresh database (SQLite file, or the PostgreSQL schema wiped) migrated to head."""
    from flask_migrate import upgrade

    from idp import MIGRATIONS_DIR, create_app
    from idp.models import db

    instance = workdir / name
    settings = {"DATABASE_URL": database_url or f"sqlite:///{instance / 'idp.db'}",
                "INSTANCE_DIR": instance, "KEYS_DIR": workdir / "keys",
                "SECRET_KEY": SECRET_KEY, "ISSUER": "http://127.0.0.1:5000",
                "NOTICE_DELAY": "0s", "SMTP_TIMEOUT": "5s", "BACKCHANNEL_IMMEDIATE": False,
                **FAST_ARGON2}
    if smtp_url:
        settings["SMTP_URL"] = smtp_url
    app = create_app(settings)
    with app.app_context():
        if database_url:
            db.session.remove()
            with db.engine.begin() as conn:
                conn.execute(sa.text("DROP SCHEMA public CASCADE"))
                conn.execute(sa.text("CREATE SCHEMA public"))
        upgrade(directory=MIGRATIONS_DIR)
        db.session.remove()
    return app


def close(app) -> None:
    from idp.models import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def browser(marker: str | None):
    from idp.sessions import Origin

    return Origin(ip="203.0.113.7", device_label="Firefox on Windows", device_type="desktop",
                  location="Paris, France", device_marker=marker)


def sign_in(user, marker: str) -> float:
    """One password sign-in (as ``tests.flows.start_session``) and its commit, in ms."""
    from idp import sessions
    from idp.models import db

    started = time.perf_counter()
    sessions.start(user, browser(marker), now=sessions_now(),
                   verified_version=user.credentials_version)
    db.session.commit()
    return (time.perf_counter() - started) * 1000


def sessions_now():
    from flask import current_app

    return current_app.extensions["idp"].clock.now()


def populate(app, count: int) -> list[tuple[int, str]]:
    """``count`` users with verified addresses, each signed in once from a new browser
    (one notice each in the outbox); their ids and markers."""
    from bench.seed import _bar
    from idp import accounts
    from idp.models import User, db

    users: list[tuple[int, str]] = []
    with app.app_context():
        now = sessions_now()
        account = accounts.create_account("bench-mail", now=now, max_duration=24 * 3600,
                                          idle_timeout=2 * 3600)
        db.session.commit()
        hasher = app.extensions["idp"].passwords
        with _bar(count, "Users signing in") as bar:
            for i in range(count):
                user = accounts.create_user(account, email=f"user{i}@mail.bench.example",
                                            password=PASSWORD, role="member", name=f"User {i}",
                                            hasher=hasher, now=sessions_now(), verified=True)
                db.session.commit()
                marker = secrets.token_urlsafe(32)
                sign_in(db.session.get(User, user.id), marker)
                users.append((user.id, marker))
                bar.update(1)
        db.session.remove()
    return users


def deliver(app, count: int) -> dict:
    """``Mailer.run_due`` passes until nothing is left to send; their times."""
    from bench.seed import _bar
    from idp.models import MailAttempt, MailMessage, db

    mailer = app.extensions["idp.mail"]
    passes: list[float] = []
    totals = Counter()
    with app.app_context():
        pending = db.session.scalar(sa.select(sa.func.count()).select_from(MailMessage)
                                    .where(MailMessage.delivered_at.is_(None)))
        db.session.remove()
        if pending != count:
            raise click.ClickException(f"{pending} messages in the outbox, {count} expected")
        with _bar(count, "Delivering      ") as bar:
            while True:
                started = time.perf_counter()
                counts = mailer.run_due()
                passes.append((time.perf_counter() - started) * 1000)
                db.session.remove()
                totals.update(counts)
                bar.update(counts["delivered"])
                if counts["attempted"] == 0:
                    passes.pop()  # the empty pass that finds the outbox empty
                    break
                if counts["delivered"] != counts["attempted"]:
                    raise click.ClickException(f"a pass did not deliver everything: {counts}")
        left = db.session.scalar(sa.select(sa.func.count()).select_from(MailMessage)
                                 .where(MailMessage.delivered_at.is_(None)))
        durations = [float(d) for d in db.session.scalars(sa.select(MailAttempt.duration_ms))]
        attempts_per_message = db.session.scalar(
            sa.select(sa.func.max(MailMessage.attempts)))
        db.session.remove()
    total_s = sum(passes) / 1000
    return {"messages": count, "delivered": totals["delivered"], "left_in_outbox": left,
            "passes": len(passes), "total_s": round(total_s, 3),
            "messages_per_s": round(count / total_s, 1),
            "ms_per_message": round(total_s * 1000 / count, 3),
            "attempt_duration": summary(durations),
            "most_attempts_on_one_message": attempts_per_message}


def check_arrivals(received: list, count: int) -> dict:
    """Each user's notice arrived once: one message per address, no id twice."""
    addresses = Counter(str(m["To"]) for m in received)
    ids = Counter(str(m["X-Idp-Message"]) for m in received)
    expected = {f"user{i}@mail.bench.example" for i in range(count)}
    return {"received": len(received),
            "addresses_missing": len(expected - set(addresses)),
            "addresses_twice_or_more": sum(1 for n in addresses.values() if n > 1),
            "ids_twice_or_more": sum(1 for n in ids.values() if n > 1),
            "exactly_once": len(received) == count and set(addresses) == expected
            and all(n == 1 for n in addresses.values()) and all(n == 1 for n in ids.values())}


def transport_run(workdir: Path, database_url: str | None, users: int, kind: str) -> tuple:
    if kind == "smtp":
        with smtp_server() as (inbox, port):
            app = make_app(workdir, database_url, kind, f"smtp://127.0.0.1:{port}?starttls=no")
            people = populate(app, users)
            result = deliver(app, users)
            received = list(inbox.messages)
    else:
        app = make_app(workdir, database_url, kind, None)
        people = populate(app, users)
        result = deliver(app, users)
        import email
        import email.policy

        received = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                    for p in sorted((workdir / kind / "mail").glob("*.eml"))]
    result["arrivals"] = check_arrivals(received, users)
    return app, people, result


def sign_in_cost(app, people: list[tuple[int, str]], count: int) -> dict:
    """A new browser (notice) against a known one (none), the same users, interleaved."""
    from bench.seed import _bar
    from idp.models import MailMessage, User, db

    if count + WARMUP > len(people):
        raise click.ClickException(f"--sign-ins {count} needs at least {count + WARMUP} users")
    times: dict[str, list[float]] = {"new_device": [], "known_device": []}
    with app.app_context():
        before = db.session.scalar(sa.select(sa.func.count()).select_from(MailMessage))
        with _bar(count + WARMUP, "Sign-ins        ") as bar:
            for i, (user_id, marker) in enumerate(people[:count + WARMUP]):
                order = [("known_device", marker), ("new_device", secrets.token_urlsafe(32))]
                if i % 2:
                    order.reverse()
                for kind, this_marker in order:
                    elapsed = sign_in(db.session.get(User, user_id), this_marker)
                    if i >= WARMUP:
                        times[kind].append(elapsed)
                db.session.remove()
                bar.update(1)
        written = db.session.scalar(sa.select(sa.func.count()).select_from(MailMessage)) - before
        db.session.remove()
    result = {kind: summary(values) for kind, values in times.items()}
    result["notices_written"] = written
    result["p50_difference_ms"] = round(result["new_device"]["p50_ms"]
                                        - result["known_device"]["p50_ms"], 3)
    return result


@click.command()
@click.option("--database-url", default=None,
              help="PostgreSQL to wipe and use (default: SQLite in a fresh folder).")
@click.option("--users", default=500, show_default=True, type=int,
              help="Users, each signing in once from a new browser: the notices delivered.")
@click.option("--sign-ins", "sign_ins", default=300, show_default=True, type=int,
              help="Sign-ins of each kind (new browser, known browser) timed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def main(database_url: str | None, users: int, sign_ins: int, as_json: bool) -> None:
    for name in [k for k in os.environ if k.startswith("IDP_")]:
        del os.environ[name]
    workdir = Path(tempfile.mkdtemp(prefix="idp-mail-"))
    result: dict = {"database": "postgresql" if database_url else "sqlite", "users": users}
    try:
        app, _, result["smtp"] = transport_run(workdir, database_url, users, "smtp")
        close(app)
        app, people, result["folder"] = transport_run(workdir, database_url, users, "folder")
        result["sign_in"] = sign_in_cost(app, people, sign_ins)
        close(app)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['database']}, {users} new-device notices")
    print(f"{'transport':10} {'msg/s':>8} {'ms/msg':>8} {'passes':>7} "
          f"{'attempt p50':>12} {'attempt p99':>12}  arrived exactly once")
    for kind in ("smtp", "folder"):
        r = result[kind]
        a = r["attempt_duration"]
        print(f"{kind:10} {r['messages_per_s']:>8.1f} {r['ms_per_message']:>8.2f} "
              f"{r['passes']:>7} {a['p50_ms']:>9.0f} ms {a['p99_ms']:>9.0f} ms  "
              f"{r['arrivals']['exactly_once']} ({r['arrivals']['received']} received)")
    s = result["sign_in"]
    for kind in ("known_device", "new_device"):
        r = s[kind]
        print(f"sign-in, {kind.replace('_', ' '):13} n={r['n']}  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  mean {r['mean_ms']:.2f} ms")
    print(f"p50 difference (new - known): {s['p50_difference_ms']:+.2f} ms "
          f"({s['notices_written']} notices written)")


if __name__ == "__main__":
    main()
