"""Seed a benchmark database in bulk: accounts (with three different session policies),
users, clients, login sessions in every state, token families, refresh tokens (current
and rotated), used authorization codes, audit events and back-channel logout deliveries
— plus the credentials the load generator presents (one fresh refresh token or code per
request).

Two steps, so a big history can be seeded once and reused by later runs:

- ``seed_history`` writes ``sessions`` sessions and everything that hangs off them.
  On PostgreSQL rows go in with ``COPY`` (psycopg's ``cursor.copy``), elsewhere with
  multi-row ``executemany``; nothing is hashed per row (one argon2 hash for every user,
  one SHA-256 for every secret nobody presents). It ends by recording a marker account
  (``bench-seeded-<sessions>-<stale>``) so ``history_present`` can tell it is there.
- ``seed_fresh`` adds a pair of clients and ``fresh`` sessions of their own, each with
  a refresh token and a code the load presents once, and signs access tokens; it writes
  them to the run folder (``refresh_tokens.txt``, ``codes.txt``, ...). It runs before
  every benchmark, on a new or a reused history.

State mix of the history (``stale`` is the share of open sessions already past a
deadline that nobody has marked yet — what ``idp sweep`` expires; the rest splits
50 : 35 between active sessions and sessions ended by each reason, a quarter of those
ended before the 30-day retention).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import sqlalchemy as sa

from idp import accounts, passwords, tokens
from idp.models import Account, User, db

CHUNK = 20000
BENCH_PASSWORD = "bench password 123"
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0 Safari/537.36")
SCOPE = "openid profile email sessions"
REDIRECT_URI = "https://bench.example/callback"
MARKER = "bench-seeded-{sessions}-{stale}"
HOUR = 3600
DAY = 24 * HOUR
# (max duration, idle timeout) in seconds; account i gets POLICIES[i % 10]: mostly the
# default, one in ten strict, one in ten lax.
POLICIES = [(24 * HOUR, 2 * HOUR)] * 8 + [(8 * HOUR, 30 * 60), (72 * HOUR, 8 * HOUR)]
ENDED_REASONS = ["logout", "ended_by_user", "ended_all", "ended_by_admin", "expired_duration",
                 "expired_idle", "evicted_concurrent", "password_changed", "disabled"]

COLUMNS = {
    "accounts": ("name", "created_at", "max_session_duration", "idle_timeout",
                 "max_concurrent_sessions", "on_concurrent_limit"),
    "users": ("sub", "account_id", "email", "email_verified", "name", "role", "password_hash",
              "created_at"),
    "login_sessions": ("id", "secret_hash", "user_id", "account_id", "kind", "created_at",
                       "last_active_at", "updated_at", "ended_at", "end_reason", "amr",
                       "ip_first", "ip_last", "user_agent", "device_label", "device_type",
                       "location"),
    "token_families": ("id", "session_id", "client_id", "user_id", "scope", "created_at",
                       "last_issued_at", "revoked_at", "revoke_reason"),
    "refresh_tokens": ("id", "secret_hash", "family_id", "issued_at", "expires_at", "rotated_at"),
    "authorization_codes": ("id", "secret_hash", "client_id", "session_id", "user_id",
                            "redirect_uri", "scope", "nonce", "code_challenge",
                            "code_challenge_method", "auth_time", "amr", "created_at",
                            "expires_at", "used_at", "family_id"),
    "audit_events": ("at", "event", "account_id", "user_id", "session_id", "client_id", "actor",
                     "ip", "detail"),
    "logout_deliveries": ("session_id", "client_id", "subject", "uri", "created_at",
                          "next_attempt_at", "attempts", "last_status", "delivered_at"),
}
JSON_COLUMNS = {"login_sessions": {"amr"}, "authorization_codes": {"amr"},
                "audit_events": {"detail"}}
ORDER = list(COLUMNS)  # foreign keys point backwards in this list


@dataclass
class Seeded:
    client_id: str
    client_secret: str
    rs_client_id: str
    rs_client_secret: str
    redirect_uri: str
    emails: list[str]


class Loader:
    """Buffers rows per table and writes them in dependency order: COPY on PostgreSQL,
    executemany elsewhere. Rows are tuples in ``COLUMNS`` order with naive UTC datetimes
    and JSON already serialised."""

    def __init__(self, engine: sa.Engine, chunk: int = CHUNK):
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self.chunk = chunk
        self.buffers: dict[str, list[tuple]] = {name: [] for name in ORDER}
        self.pending = 0
        self.written = 0
        self.types: dict[str, list[str]] = {}
        self.raw = engine.raw_connection()
        if self.pg:
            with self.raw.cursor() as cursor:
                # A benchmark seed: losing the last commits in a crash is fine.
                cursor.execute("SET synchronous_commit = off")
            self.raw.commit()
            try:
                with self.raw.cursor() as cursor:
                    # Rows are consistent by construction: skip the per-row foreign-key
                    # triggers, as pg_restore --disable-triggers does (superuser only).
                    cursor.execute("SET session_replication_role = replica")
                self.raw.commit()
            except Exception:  # noqa: BLE001 - not allowed: keep the checks
                self.raw.rollback()

    def add(self, table: str, row: tuple) -> None:
        self.buffers[table].append(row)
        self.pending += 1

    def full(self) -> bool:
        return self.pending >= self.chunk

    def flush(self) -> None:
        for table in ORDER:
            rows = self.buffers[table]
            if rows:
                self._write(table, rows)
                self.written += len(rows)
                rows.clear()
        self.raw.commit()
        self.pending = 0

    def _types(self, table: str) -> list[str]:
        if table not in self.types:
            with self.raw.cursor() as cursor:
                cursor.execute(
                    "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                    "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,))
                found = dict(cursor.fetchall())
            # JSON arrives serialised: sent as text, which is json's binary wire format too.
            self.types[table] = ["text" if found[column] == "json" else found[column]
                                 for column in COLUMNS[table]]
        return self.types[table]

    def _write(self, table: str, rows: list[tuple]) -> None:
        columns = COLUMNS[table]
        cursor = self.raw.cursor()
        try:
            if self.pg:
                # Binary COPY: several times less work than text on both sides.
                types = self._types(table)
                sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
                with cursor.copy(sql) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" for _ in columns)
                insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
                cursor.executemany(insert, [tuple(_sqlite_value(v) for v in row) for row in rows])
        finally:
            cursor.close()

    def close(self) -> None:
        if self.pg:
            with self.raw.cursor() as cursor:
                cursor.execute("RESET session_replication_role")
                cursor.execute("RESET synchronous_commit")
            self.raw.commit()
        self.raw.close()


class Ids:
    """Random URL-safe ids (22 characters, 132 bits, the shape of ``passwords.new_id``),
    cut from one large random buffer at a time: a few times cheaper than one call each."""

    def __init__(self, length: int = 22, per_buffer: int = 4096):
        self.length, self.per_buffer = length, per_buffer
        self.buffer, self.at = "", 0

    def __call__(self) -> str:
        if self.at + self.length > len(self.buffer):
            raw = os.urandom(self.length * self.per_buffer * 3 // 4)
            self.buffer, self.at = base64.urlsafe_b64encode(raw).decode(), 0
        self.at += self.length
        return self.buffer[self.at - self.length:self.at]


new_id = Ids()


def _sqlite_value(value):
    # The storage format SQLAlchemy's SQLite DateTime writes and compares against.
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def marker_name(sessions_count: int, stale: float) -> str:
    return MARKER.format(sessions=sessions_count, stale=f"{stale:g}")


def history_present(sessions_count: int, stale: float) -> bool:
    """True when ``seed_history`` finished on this database with the same size and mix."""
    try:
        found = db.session.execute(sa.text("SELECT 1 FROM accounts WHERE name = :n"),
                                   {"n": marker_name(sessions_count, stale)}).first()
    except sa.exc.DBAPIError:
        db.session.rollback()
        return False
    return found is not None


def _bar(length: int, label: str):
    return click.progressbar(length=length, label=label, file=click.get_text_stream("stderr"),
                             show_pos=True, show_eta=True)


def seed_history(app, sessions_count: int, *, stale: float = 0.15, seed: int = 1) -> dict:
    """``sessions_count`` sessions in history with everything under them; returns row counts."""
    services = app.extensions["idp"]
    now_aware = services.clock.now()
    now = _naive(now_aware)
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    started = time.monotonic()
    with app.app_context():
        history, _ = accounts.create_client(
            name="Bench history app", redirect_uris=[REDIRECT_URI], first_party=True,
            scope=SCOPE, now=now_aware)
        mail, _ = accounts.create_client(
            name="Bench mail", redirect_uris=["https://mail.bench.example/callback"],
            first_party=True, scope="openid email",
            # Nobody listens there: deliveries the sweep writes stay pending for the worker.
            backchannel_logout_uri="http://127.0.0.1:9/backchannel", now=now_aware)
        db.session.commit()
        users_count = max(10, sessions_count // 10)
        accounts_count = max(1, users_count // 100)
        loader = Loader(db.engine)
        deferred = _defer_indexes(db.engine)
        try:
            for i in range(accounts_count):
                duration, idle = POLICIES[i % len(POLICIES)]
                loader.add("accounts", (f"bench-{i}", now - timedelta(days=90), duration, idle,
                                        None, "deny"))
            loader.flush()
            account_policy = {
                row.id: POLICIES[int(row.name.split("-")[1]) % len(POLICIES)]
                for row in db.session.execute(sa.text(
                    "SELECT id, name FROM accounts WHERE name LIKE 'bench-%' "
                    "AND name NOT LIKE 'bench-seeded-%'"))
            }
            account_ids = sorted(account_policy)
            one_hash = services.passwords.hash(BENCH_PASSWORD)  # one argon2 hash for all
            with _bar(users_count, "Seeding users   ") as bar:
                for i in range(users_count):
                    loader.add("users", (new_id(), account_ids[i % len(account_ids)],
                                         f"user{i}@bench.example", True, f"User {i}", "member",
                                         one_hash, now - timedelta(days=60)))
                    if loader.full():
                        bar.update(loader.pending)
                        loader.flush()
                bar.update(loader.pending)
                loader.flush()
            users = db.session.execute(sa.text(
                "SELECT id, account_id, sub FROM users WHERE email LIKE '%@bench.example' "
                "ORDER BY id")).all()
            db.session.commit()
            # Timings first, then rows in the order a live system writes them: a row sits
            # where its last version was written (sessions by their last activity or end),
            # so the table's physical order follows time as in production.
            specs = sorted(
                (_history_times(rng, now, account_policy[users[i % len(users)].account_id],
                                stale) + (i % len(users), rng.random() < 0.15, rng.random())
                 for i in range(sessions_count)),
                key=lambda spec: spec[4] or spec[1])
            started_events = []
            with _bar(sessions_count, "Seeding sessions") as bar:
                done = 0
                for n, spec in enumerate(specs):
                    user = users[spec[5]]
                    _history_session(loader, now, user, account_policy[user.account_id], spec,
                                     history.client_id, mail, started_events)
                    if loader.full():
                        loader.flush()
                        bar.update(n + 1 - done)
                        done = n + 1
                del specs
                started_events.sort()
                for event in started_events:
                    loader.add("audit_events", event)
                    if loader.full():
                        loader.flush()
                loader.add("accounts", (marker_name(sessions_count, stale), now, 24 * HOUR,
                                        2 * HOUR, None, "deny"))
                loader.flush()
                bar.update(sessions_count - done)
        finally:
            loader.close()
            loaded = time.monotonic()
            _restore_indexes(db.engine, deferred)
        indexed = time.monotonic()
        counts = {}
        for table in ORDER:
            counts[table] = db.session.scalar(sa.text(f"SELECT count(*) FROM {table}"))  # noqa: S608
        db.session.commit()
        _analyze(db.engine)
        click.echo(f"rows written in {loaded - started:.1f} s, indexes built in "
                   f"{indexed - loaded:.1f} s, vacuum/analyze in {time.monotonic() - indexed:.1f} s",
                   err=True)
        return counts


def _defer_indexes(engine: sa.Engine) -> list[str]:
    """On an empty PostgreSQL database, drop the secondary (non-unique) indexes of the bulk
    tables so COPY only appends; ``_restore_indexes`` builds them once at the end (a sorted
    build is several times cheaper than a million inserts into each). Same names, same
    definitions: the schema ends exactly as the migrations left it."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT EXISTS (SELECT 1 FROM login_sessions)")).scalar():
            return []
        rows = conn.execute(sa.text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "JOIN pg_class c ON c.relname = i.indexname "
            "JOIN pg_index x ON x.indexrelid = c.oid "
            "WHERE i.schemaname = current_schema() AND i.tablename = ANY(:tables) "
            "AND NOT x.indisunique AND NOT x.indisprimary"), {"tables": ORDER}).all()
        for name, _definition in rows:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
    return [definition for _name, definition in rows]


def _restore_indexes(engine: sa.Engine, definitions: list[str]) -> None:
    if not definitions:
        return
    with engine.connect() as conn:
        conn.execute(sa.text("SET maintenance_work_mem = '256MB'"))
        with _bar(len(definitions), "Building indexes") as bar:
            for definition in definitions:
                conn.execute(sa.text(definition))
                conn.commit()
                bar.update(1)


def _analyze(engine: sa.Engine) -> None:
    """Fresh statistics (and, on PostgreSQL, the visibility map) before anything is measured."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in ORDER:
                conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))
            # Write the seeded pages out now, not in a checkpoint during the load (needs
            # superuser or pg_checkpoint; without, the run is only noisier).
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.execute(sa.text("CHECKPOINT"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))


def _history_times(rng: random.Random, now: datetime, policy: tuple, stale: float) -> tuple:
    """(created, last active, ended at, end reason, sort key) of one history session."""
    duration, idle = policy
    d, i = timedelta(seconds=duration), timedelta(seconds=idle)
    roll = rng.random()
    ended_at = reason = None
    if roll < stale:  # open, past a deadline, not marked yet
        if rng.random() < 2 / 3:  # idle
            age = rng.uniform(idle + 60, duration - 60)
            created = now - timedelta(seconds=age)
            last = created + timedelta(seconds=rng.uniform(0, age - idle - 1))
        else:  # past the maximum duration
            created = now - timedelta(seconds=rng.uniform(duration + 60, duration + 3 * DAY))
            last = now - timedelta(seconds=rng.uniform(0, idle + 3 * HOUR))
    elif roll < stale + (1 - stale) * 50 / 85:  # active
        age = rng.uniform(60, duration - 60)
        created = now - timedelta(seconds=age)
        last = now - timedelta(seconds=rng.uniform(0, min(age, idle - 60)))
    else:  # ended, a quarter of them longer ago than the 30-day retention
        reason = ENDED_REASONS[rng.randrange(len(ENDED_REASONS))]
        end_age = rng.uniform(60, 40 * DAY)
        if reason == "expired_duration":
            created = now - timedelta(seconds=end_age + duration)
            ended_at = created + d
            last = ended_at - timedelta(seconds=rng.uniform(60, idle - 60))
        elif reason == "expired_idle":
            ended_at = now - timedelta(seconds=end_age)
            last = ended_at - i
            created = last - timedelta(seconds=rng.uniform(0, duration - idle - 60))
        else:
            ended_at = now - timedelta(seconds=end_age)
            created = ended_at - timedelta(seconds=rng.uniform(60, duration - 60))
            last = ended_at - min(ended_at - created, timedelta(seconds=rng.uniform(0, idle - 60)))
    return created, last, ended_at, reason, ended_at


def _history_session(loader: Loader, now: datetime, user, policy: tuple, spec: tuple,
                     client_id: str, mail, started_events: list) -> None:
    created, last, ended_at, reason, _key, _user, with_mail, roll = spec
    d = timedelta(seconds=policy[0])
    updated = ended_at or last
    sid = new_id()
    loader.add("login_sessions", (
        sid, HASH, user.id, user.account_id, "browser", created, last, updated, ended_at, reason,
        '["pwd"]', "203.0.113.7", "203.0.113.7", UA, "Chrome on macOS", "desktop", "France"))
    started_events.append((created, "session.started", user.account_id, user.id, sid, None,
                           f"user:{user.sub}", "203.0.113.7", STARTED_DETAIL))
    families = [client_id] + ([mail.client_id] if with_mail else [])
    for family_client in families:
        fid = new_id()
        issued = created + timedelta(seconds=1)
        revoked = ended_at if ended_at else None
        loader.add("token_families", (fid, sid, family_client, user.id, SCOPE, issued,
                                      last if last > issued else issued, revoked,
                                      "session_ended" if revoked else None))
        loader.add("authorization_codes", (
            new_id(), HASH, family_client, sid, user.id, REDIRECT_URI, SCOPE, None,
            None, None, created, '["pwd"]', created, created + timedelta(seconds=60),
            issued, fid))
        cap = created + d
        if roll < 0.3:  # one rotation happened
            loader.add("refresh_tokens", (new_id(), HASH, fid, issued,
                                          min(issued + timedelta(days=30), cap), last))
        loader.add("refresh_tokens", (new_id(), HASH, fid, last,
                                      min(last + timedelta(days=30), cap), None))
        if ended_at and family_client == mail.client_id:
            loader.add("logout_deliveries", (
                sid, mail.client_id, user.sub, mail.backchannel_logout_uri, ended_at, ended_at,
                1, 200, ended_at + timedelta(seconds=1)))
    if ended_at:
        expiry = reason.startswith("expired")
        detail = json.dumps({"reason": reason, "families_revoked": len(families)})
        loader.add("audit_events", (
            ended_at, "session.expired" if expiry else "session.ended", user.account_id, user.id,
            sid, None, "policy" if expiry else f"user:{user.sub}", None, detail))


HASH = passwords.hash_secret("never presented")
STARTED_DETAIL = json.dumps({"device": "Chrome on macOS", "location": "France", "kind": "browser"})


def seed_fresh(app, fresh: int, out: Path, *, progress: Callable[[int], None] | None = None
               ) -> Seeded:
    """New clients and ``fresh`` sessions each holding a refresh token and a code presented
    once by the load; access tokens signed with the run's keys; files for wrk in ``out``."""
    services = app.extensions["idp"]
    now_aware = services.clock.now()
    now = _naive(now_aware)
    with app.app_context():
        client, secret = accounts.create_client(
            name="Bench app", redirect_uris=[REDIRECT_URI], first_party=True, scope=SCOPE,
            client_credentials=True, now=now_aware)
        rs, rs_secret = accounts.create_client(name="Bench API", redirect_uris=[],
                                               resource_server=True, now=now_aware)
        db.session.commit()
        # Users of default-policy accounts (24 h, 2 h), so fresh sessions stay active.
        users = db.session.execute(
            sa.select(User.id, User.account_id, User.sub, User.email)
            .where(User.email.like("%@bench.example"),
                   User.account_id.in_(sa.select(Account.id).where(
                       Account.max_session_duration == 24 * HOUR,
                       Account.idle_timeout == 2 * HOUR)))
            .order_by(User.id).limit(max(50, min(fresh, 5000)))).all()
        if not users:
            raise click.ClickException("no bench users: seed the history first")
        fresh_rt, fresh_codes, access, cookies = [], [], [], []
        loader = Loader(db.engine)
        alg = app.config["ACCESS_TOKEN_ALG"]
        reported = 0
        iat = int(now_aware.timestamp())
        try:
            for i in range(fresh):
                user = users[i % len(users)]
                sid, fid = passwords.new_id(), passwords.new_id()
                secret_hash = HASH
                if i < 2000:  # a browser's cookie for the sessions page
                    cookie_secret = passwords.new_token()[1]
                    secret_hash = passwords.hash_secret(cookie_secret)
                    cookies.append(f"{sid}.{cookie_secret}")
                loader.add("login_sessions", (
                    sid, secret_hash, user.id, user.account_id, "browser", now, now, now, None, None,
                    '["pwd"]', "203.0.113.8", "203.0.113.8", UA, "Chrome on macOS", "desktop",
                    "France"))
                loader.add("token_families", (fid, sid, client.client_id, user.id, SCOPE, now,
                                              now, None, None))
                row_id, rt_secret, rt_value = passwords.new_token()
                loader.add("refresh_tokens", (row_id, passwords.hash_secret(rt_secret), fid, now,
                                              now + timedelta(hours=12), None))
                fresh_rt.append(rt_value)
                code_id, code_secret, code_value = passwords.new_token()
                loader.add("authorization_codes", (
                    code_id, passwords.hash_secret(code_secret), client.client_id, sid, user.id,
                    REDIRECT_URI, "openid profile email", None, None, None, now, '["pwd"]', now,
                    now + timedelta(hours=2), None, None))
                fresh_codes.append(code_value)
                if i < 2000:
                    claims = {
                        "iss": app.config["ISSUER"], "sub": user.sub, "aud": client.client_id,
                        "client_id": client.client_id, "scope": SCOPE, "jti": passwords.new_id(),
                        "iat": iat, "nbf": iat, "exp": iat + 3000, "fam": fid, "sid": sid,
                        "auth_time": iat}
                    access.append(services.signer.sign(claims, alg=alg, typ=tokens.ACCESS_TOKEN_TYP,
                                                        now=now_aware))
                if loader.full():
                    loader.flush()
                    if progress:
                        progress(i + 1 - reported)
                    reported = i + 1
            loader.flush()
            if progress:
                progress(fresh - reported)
        finally:
            loader.close()
        # An inactive token: its family revoked (any revoked history family will do).
        revoked = db.session.execute(sa.text(
            "SELECT id, session_id FROM token_families WHERE revoked_at IS NOT NULL LIMIT 1")).first()
        inactive = []
        if revoked is not None:
            inactive.append(services.signer.sign({
                "iss": app.config["ISSUER"], "sub": "x", "aud": client.client_id,
                "client_id": client.client_id, "scope": "openid", "jti": passwords.new_id(),
                "iat": iat, "nbf": iat, "exp": iat + 3000, "fam": revoked.id,
                "sid": revoked.session_id}, alg=alg, typ=tokens.ACCESS_TOKEN_TYP, now=now_aware))
        db.session.commit()
        _analyze(db.engine)  # or autovacuum and a checkpoint run during the first rows
        out.mkdir(parents=True, exist_ok=True)
        # The last 200 stay unrotated for the "introspect an active refresh token" row.
        (out / "refresh_tokens.txt").write_text("\n".join(fresh_rt[:-200]) + "\n")
        (out / "codes.txt").write_text("\n".join(fresh_codes) + "\n")
        (out / "access_tokens.txt").write_text("\n".join(access) + "\n")
        (out / "session_cookies.txt").write_text("\n".join(cookies) + "\n")
        (out / "inactive_tokens.txt").write_text("\n".join(inactive) + "\n")
        (out / "active_refresh_tokens.txt").write_text("\n".join(fresh_rt[-200:]) + "\n")
        seeded = Seeded(client.client_id, secret, rs.client_id, rs_secret, REDIRECT_URI,
                        [u.email for u in users[:50]])
        (out / "seeded.json").write_text(json.dumps(seeded.__dict__))
        return seeded


def seed(app, sessions_count: int, fresh: int, out: Path, *, stale: float = 0.15) -> Seeded:
    """Both steps: what one benchmark run on an empty database needs."""
    seed_history(app, sessions_count, stale=stale)
    return seed_fresh(app, fresh, out)
