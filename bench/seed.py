"""Seed a benchmark database in bulk: accounts, users, clients, sessions in every
state, token families, refresh tokens, codes — plus the credentials the load
generator presents (one fresh refresh token or code per request)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import click
import sqlalchemy as sa

from idp import accounts, passwords, tokens
from idp.models import (
    Account,
    AuthorizationCode,
    LoginSession,
    RefreshToken,
    TokenFamily,
    User,
    db,
)

CHUNK = 5000
BENCH_PASSWORD = "bench password 123"
UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0 Safari/537.36")


@dataclass
class Seeded:
    client_id: str
    client_secret: str
    rs_client_id: str
    rs_client_secret: str
    redirect_uri: str
    emails: list[str]


def _insert(model, rows: list[dict]) -> None:
    for start in range(0, len(rows), CHUNK):
        db.session.execute(sa.insert(model), rows[start:start + CHUNK])


def seed(app, sessions_count: int, fresh: int, out: Path) -> Seeded:
    """``sessions_count`` sessions in history; ``fresh`` refresh tokens and codes for load."""
    services = app.extensions["idp"]
    now = services.clock.now()
    hasher = services.passwords
    with app.app_context():
        client, secret = accounts.create_client(
            name="Bench app", redirect_uris=["https://bench.example/callback"], first_party=True,
            scope="openid profile email sessions", client_credentials=True, now=now)
        rs, rs_secret = accounts.create_client(name="Bench API", redirect_uris=[],
                                               resource_server=True, now=now)
        db.session.commit()
        users_count = max(10, sessions_count // 10)
        accounts_count = max(1, users_count // 100)
        account_rows = [dict(name=f"bench-{i}", created_at=now, max_session_duration=24 * 3600,
                             idle_timeout=2 * 3600, max_concurrent_sessions=None,
                             on_concurrent_limit="deny") for i in range(accounts_count)]
        _insert(Account, account_rows)
        account_ids = list(db.session.scalars(sa.select(Account.id).order_by(Account.id)))
        one_hash = hasher.hash(BENCH_PASSWORD)  # one argon2 hash shared: seeding stays fast
        user_rows = [dict(sub=passwords.new_id(), account_id=account_ids[i % len(account_ids)],
                          email=f"user{i}@bench.example", email_verified=True, name=f"User {i}",
                          role="member", password_hash=one_hash, created_at=now)
                     for i in range(users_count)]
        _insert(User, user_rows)
        users = db.session.execute(sa.select(User.id, User.account_id, User.sub)).all()
        db.session.commit()

        session_rows, family_rows, refresh_rows = [], [], []
        secret_hash = passwords.hash_secret("x")
        with click.progressbar(length=sessions_count + fresh, label="Seeding sessions",
                               file=click.get_text_stream("stderr")) as bar:
            for i in range(sessions_count):
                user = users[i % len(users)]
                state = i % 20
                age = timedelta(minutes=1 + (i % 50))
                created = now - age
                ended = reason = None
                if state in (17, 18):  # expired: past the idle deadline, never marked
                    created = now - timedelta(hours=3)
                if state == 19:  # ended
                    ended, reason = now - timedelta(minutes=1), "logout"
                sid = passwords.new_id()
                session_rows.append(dict(
                    id=sid, secret_hash=secret_hash, user_id=user.id, account_id=user.account_id,
                    kind="browser", created_at=created, last_active_at=created,
                    updated_at=created, ended_at=ended, end_reason=reason, amr=["pwd"],
                    ip_first="203.0.113.7", ip_last="203.0.113.7", user_agent=UA,
                    device_label="Chrome on macOS", device_type="desktop", location="France"))
                fid = passwords.new_id()
                family_rows.append(dict(
                    id=fid, session_id=sid, client_id=client.client_id, user_id=user.id,
                    scope="openid profile email sessions", created_at=created,
                    last_issued_at=created, revoked_at=ended,
                    revoke_reason="session_ended" if ended else None))
                refresh_rows.append(dict(id=passwords.new_id(), secret_hash=secret_hash,
                                         family_id=fid, issued_at=created,
                                         expires_at=created + timedelta(hours=24)))
                if len(session_rows) >= CHUNK:
                    _flush(session_rows, family_rows, refresh_rows)
                    bar.update(CHUNK)
            _flush(session_rows, family_rows, refresh_rows)
            bar.update(sessions_count % CHUNK)
            # Credentials presented by the load: each on an active session of its own.
            fresh_rt, fresh_codes, access = [], [], []
            code_rows = []
            for i in range(fresh):
                user = users[i % len(users)]
                sid, fid = passwords.new_id(), passwords.new_id()
                session_rows.append(dict(
                    id=sid, secret_hash=secret_hash, user_id=user.id, account_id=user.account_id,
                    kind="browser", created_at=now, last_active_at=now, updated_at=now,
                    amr=["pwd"], ip_first="203.0.113.8", ip_last="203.0.113.8", user_agent=UA,
                    device_label="Chrome on macOS", device_type="desktop", location="France"))
                family_rows.append(dict(id=fid, session_id=sid, client_id=client.client_id,
                                        user_id=user.id, scope="openid profile email sessions",
                                        created_at=now, last_issued_at=now))
                row_id, rt_secret, rt_value = passwords.new_token()
                refresh_rows.append(dict(id=row_id, secret_hash=passwords.hash_secret(rt_secret),
                                         family_id=fid, issued_at=now,
                                         expires_at=now + timedelta(hours=12)))
                fresh_rt.append(rt_value)
                code_id, code_secret, code_value = passwords.new_token()
                code_rows.append(dict(
                    id=code_id, secret_hash=passwords.hash_secret(code_secret),
                    client_id=client.client_id, session_id=sid, user_id=user.id,
                    redirect_uri="https://bench.example/callback", scope="openid profile email",
                    auth_time=now, amr=["pwd"], created_at=now,
                    expires_at=now + timedelta(hours=2)))
                fresh_codes.append(code_value)
                if i < 2000:
                    claims = {
                        "iss": app.config["ISSUER"], "sub": user.sub, "aud": client.client_id,
                        "client_id": client.client_id, "scope": "openid profile email sessions",
                        "jti": passwords.new_id(), "iat": int(now.timestamp()),
                        "nbf": int(now.timestamp()), "exp": int(now.timestamp()) + 3000,
                        "fam": fid, "sid": sid, "auth_time": int(now.timestamp())}
                    access.append(services.keys.sign(claims, alg=app.config["ACCESS_TOKEN_ALG"],
                                                      typ=tokens.ACCESS_TOKEN_TYP))
                if len(session_rows) >= CHUNK:
                    _flush(session_rows, family_rows, refresh_rows)
                    _insert(AuthorizationCode, code_rows)
                    code_rows.clear()
                    bar.update(CHUNK)
            _flush(session_rows, family_rows, refresh_rows)
            _insert(AuthorizationCode, code_rows)
            db.session.commit()
            bar.update(fresh % CHUNK)
        # An inactive token: its family revoked.
        first = db.session.scalar(sa.select(TokenFamily).where(TokenFamily.revoked_at.is_not(None))
                                  .limit(1))
        inactive = []
        if first is not None:
            inactive.append(services.keys.sign({
                "iss": app.config["ISSUER"], "sub": "x", "aud": client.client_id,
                "client_id": client.client_id, "scope": "openid", "jti": passwords.new_id(),
                "iat": int(now.timestamp()), "nbf": int(now.timestamp()),
                "exp": int(now.timestamp()) + 3000, "fam": first.id, "sid": first.session_id},
                alg=app.config["ACCESS_TOKEN_ALG"], typ=tokens.ACCESS_TOKEN_TYP))
        out.mkdir(parents=True, exist_ok=True)
        # The last 200 stay unrotated for the "introspect an active refresh token" row.
        (out / "refresh_tokens.txt").write_text("\n".join(fresh_rt[:-200]) + "\n")
        (out / "codes.txt").write_text("\n".join(fresh_codes) + "\n")
        (out / "access_tokens.txt").write_text("\n".join(access) + "\n")
        (out / "inactive_tokens.txt").write_text("\n".join(inactive) + "\n")
        (out / "active_refresh_tokens.txt").write_text("\n".join(fresh_rt[-200:]) + "\n")
        seeded = Seeded(client.client_id, secret, rs.client_id, rs_secret,
                        "https://bench.example/callback",
                        [f"user{i}@bench.example" for i in range(min(users_count, 50))])
        (out / "seeded.json").write_text(json.dumps(seeded.__dict__))
        return seeded


def _flush(sessions: list, families: list, refresh: list) -> None:
    _insert(LoginSession, sessions)
    _insert(TokenFamily, families)
    _insert(RefreshToken, refresh)
    sessions.clear()
    families.clear()
    refresh.clear()

