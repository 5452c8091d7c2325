"""A stolen database (OWASP ASVS V2.4, V6.2, V6.4; RFC 9700 §4.14; DESIGN invariant 6):
after sign-ins, code exchanges, refreshes, a device login and client registration,
no table holds a password, client secret, session cookie, code, device code or
refresh token: only SHA-256 hashes of 256-bit secrets (argon2id for passwords), so
a dump lets nobody in. Secrets are compared in constant time, and the hot token paths
never pay for argon2."""

from __future__ import annotations

import hashlib
import hmac

import sqlalchemy as sa

from idp import passwords
from idp.models import AuthorizationCode, Client, DeviceCode, LoginSession, RefreshToken, User, db
from tests.conftest import PASSWORD
from tests.security.conftest import ADA, read


def dump(app) -> str:
    """Every row of every table, as text."""
    def everything():
        out = []
        for table in db.metadata.sorted_tables:
            out.extend(repr(tuple(row)) for row in db.session.execute(sa.select(table)))
        return "\n".join(out)

    return read(app, everything)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_database_dump_holds_no_usable_secret(app, ada, party, signed_in):
    photos = party("Photos")
    cli = party("acme-cli", public=True, device=True, redirect_uri="http://127.0.0.1:8765/cb")
    browser = signed_in(ADA)
    grant = photos.code(browser)
    tokens = photos.exchange(grant).get_json()
    rotated = photos.refresh(tokens["refresh_token"]).get_json()
    device = cli.http.post("/oauth/device", data={"client_id": cli.client_id}).get_json()
    secrets = {
        "password": PASSWORD,
        "client secret": photos.secret,
        "session cookie": browser.cookie(),
        "authorization code": grant.code,
        "refresh token": tokens["refresh_token"],
        "rotated refresh token": rotated["refresh_token"],
        "device code": device["device_code"],
        "access token": tokens["access_token"],
        "id token": tokens["id_token"],
    }
    text = dump(app)
    for name, value in secrets.items():
        assert value not in text, name
        if value.count(".") == 1:  # <id>.<secret>: the id is public, the secret never stored
            assert value.split(".")[1] not in text, name

    def stored():
        user = db.session.scalar(sa.select(User).where(User.email == ADA))
        client = db.session.get(Client, photos.client_id)
        session = db.session.get(LoginSession, browser.sid)
        code = db.session.get(AuthorizationCode, grant.code.split(".")[0])
        refresh = db.session.get(RefreshToken, rotated["refresh_token"].split(".")[0])
        device_row = db.session.get(DeviceCode, device["device_code"].split(".")[0])
        return (user.password_hash, client.secret_hash, session.secret_hash, code.secret_hash,
                refresh.secret_hash, device_row.secret_hash)

    password_hash, *hashes = read(app, stored)
    assert password_hash.startswith("$argon2id$")
    expected = [sha256(photos.secret)] + [sha256(v.split(".")[1]) for v in (
        browser.cookie(), grant.code, rotated["refresh_token"], device["device_code"])]
    assert hashes == expected


def test_generated_secrets_carry_256_bits(app):
    for _ in range(20):
        row_id, secret, value = passwords.new_token()
        assert len(secret) == 43 and len(row_id) >= 22  # 32 and 16 random bytes, base64url
        assert value == f"{row_id}.{secret}"
    assert len({passwords.new_token()[1] for _ in range(200)}) == 200


def test_secrets_are_compared_in_constant_time_and_token_paths_skip_argon2(
        app, ada, party, signed_in, monkeypatch):
    photos = party("Photos")
    browser = signed_in(ADA)
    tokens = photos.tokens(browser)
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append(len(a))
        return real(a, b)

    monkeypatch.setattr(passwords.hmac, "compare_digest", spy)
    service = app.extensions["idp"].passwords
    argon2 = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def verify(self, *args):
            argon2.append(args)
            return self.inner.verify(*args)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(service, "hasher", Counting(service.hasher))
    for name, call in (
        ("refresh", lambda: photos.refresh(tokens["refresh_token"])),
        ("introspect", lambda: photos.introspect(tokens["refresh_token"])),
        ("cookie", lambda: browser.get("/account/sessions")),
        ("wrong client secret", lambda: photos.http.post(
            "/oauth/introspect", data={"token": "x"}, auth=(photos.client_id, "guess"))),
        ("forged refresh token", lambda: photos.refresh(
            tokens["refresh_token"].split(".")[0] + "." + "A" * 43)),
    ):
        compared.clear()
        call()
        assert compared, f"{name}: no constant-time comparison"
        assert set(compared) == {64}, name  # hex SHA-256 digests of equal length
    assert argon2 == []  # no password hashing on any token or cookie path
