"""Creating accounts, users and clients: only valid, safe values get in, and secrets are
shown once and kept hashed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from idp import accounts, passwords
from idp.accounts import AccountError
from idp.models import Account, Client, OnLimit, User, db

PASSWORD = "correct horse battery staple"
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def refused_client(redirect_uris: list[str] | None = None, **kwargs) -> None:
    """Refusals happen before anything touches the database, so these need no app."""
    uris = ["https://photos.example.com/callback"] if redirect_uris is None else redirect_uris
    accounts.create_client(name="Photos", redirect_uris=uris, now=NOW, **kwargs)


@pytest.fixture
def acme(ctx, clock) -> Account:
    account = accounts.create_account("acme", now=clock.now(), max_duration=86400, idle_timeout=7200)
    db.session.commit()
    return account


def add_user(ctx, clock, account: Account, **overrides) -> User:
    values = {"email": "ada@example.com", "password": PASSWORD, "role": "member", "name": "Ada"}
    values.update(overrides)
    user = accounts.create_user(
        account, hasher=ctx.extensions["idp"].passwords, now=clock.now(), **values
    )
    db.session.commit()
    return user


def add_client(clock, redirect_uris: list[str] | None = None, **kwargs) -> tuple[Client, str | None]:
    uris = ["https://photos.example.com/callback"] if redirect_uris is None else redirect_uris
    client, secret = accounts.create_client(name="Photos", redirect_uris=uris, now=clock.now(), **kwargs)
    db.session.commit()
    return client, secret


# -- accounts ------------------------------------------------------------------------------------


def test_a_new_account_gets_the_given_policy_and_no_concurrent_limit(ctx, clock, acme):
    row = db.session.get(Account, acme.id)
    assert (row.name, row.max_session_duration, row.idle_timeout) == ("acme", 86400, 7200)
    assert row.max_concurrent_sessions is None
    assert row.on_concurrent_limit == OnLimit.DENY
    assert accounts.find_account("acme").id == acme.id


def test_an_account_name_can_only_be_taken_once(ctx, clock, acme):
    with pytest.raises(AccountError, match="an account named 'acme' already exists"):
        accounts.create_account("  acme ", now=clock.now(), max_duration=86400, idle_timeout=7200)


@pytest.mark.parametrize("name", ["", "   ", "x" * 121])
def test_an_account_needs_a_sensible_name(name):
    with pytest.raises(AccountError, match="1 to 120 characters"):
        accounts.create_account(name, now=NOW, max_duration=86400, idle_timeout=7200)


def test_looking_up_a_missing_account_says_how_to_create_it(ctx):
    with pytest.raises(AccountError, match="idp create-account"):
        accounts.find_account("nobody")


# -- users ---------------------------------------------------------------------------------------


def test_a_users_email_is_stored_trimmed_and_lowercase(ctx, clock, acme):
    user = add_user(ctx, clock, acme, email="  Ada.Lovelace@Example.COM ")
    assert db.session.get(User, user.id).email == "ada.lovelace@example.com"


def test_a_user_gets_an_opaque_subject_and_an_argon2id_password_hash(ctx, clock, acme):
    user = add_user(ctx, clock, acme)
    other = add_user(ctx, clock, acme, email="grace@example.com")
    assert user.sub != other.sub and "@" not in user.sub
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    assert ctx.extensions["idp"].passwords.verify(user.password_hash, PASSWORD) == (True, None)
    assert user.email_verified is False and user.disabled_at is None
    assert (user.role, user.name, user.account_id) == ("member", "Ada", acme.id)


def test_an_email_can_only_be_used_once_whatever_its_case(ctx, clock, acme):
    add_user(ctx, clock, acme)
    with pytest.raises(AccountError, match="a user with email ada@example.com already exists"):
        add_user(ctx, clock, acme, email="ADA@example.com")


@pytest.mark.parametrize(
    "email", ["", "ada", "ada@", "@example.com", "ada@example", "ada lovelace@example.com", "a@b@c.com"]
)
def test_something_that_is_not_an_email_address_is_refused(email):
    with pytest.raises(AccountError, match="not an email address"):
        accounts.create_user(
            Account(id=1), email=email, password=PASSWORD, role="member", name=None, hasher=None,
            now=NOW,
        )


def test_a_password_shorter_than_eight_characters_is_refused(ctx, clock, acme):
    with pytest.raises(AccountError, match="at least 8 characters"):
        add_user(ctx, clock, acme, password="1234567")
    assert add_user(ctx, clock, acme, password="12345678").id


def test_an_absurdly_long_password_is_refused(ctx, clock, acme):
    with pytest.raises(AccountError, match="at most 1024 characters"):
        add_user(ctx, clock, acme, password="x" * 1025)


@pytest.mark.parametrize("role", ["root", "", "Owner"])
def test_an_unknown_role_is_refused(ctx, clock, acme, role):
    with pytest.raises(AccountError, match="role must be owner, admin or member"):
        add_user(ctx, clock, acme, role=role)


@pytest.mark.parametrize("role", ["owner", "admin", "member"])
def test_each_known_role_is_accepted(ctx, clock, acme, role):
    assert add_user(ctx, clock, acme, role=role).role == role


def test_a_refused_user_leaves_nothing_behind(ctx, clock, acme):
    with pytest.raises(AccountError):
        add_user(ctx, clock, acme, password="short")
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


# -- clients -------------------------------------------------------------------------------------


def test_a_confidential_clients_secret_is_returned_once_and_only_its_hash_is_stored(ctx, clock):
    client, secret = add_client(clock)
    assert secret is not None and len(secret) >= 43  # 256 bits, URL-safe
    db.session.expire_all()
    row = db.session.get(Client, client.client_id)
    assert row.secret_hash == passwords.hash_secret(secret)
    stored = [getattr(row, column.key) for column in sa.inspect(Client).columns]
    assert all(secret not in str(value) for value in stored)
    assert row.check_client_secret(secret) is True
    assert row.check_client_secret(secret + "x") is False
    assert not row.is_public
    assert row.check_endpoint_auth_method("client_secret_basic", "token")
    assert not row.check_endpoint_auth_method("none", "token")


def test_two_clients_get_different_ids_and_secrets(ctx, clock):
    one, one_secret = add_client(clock)
    two, two_secret = add_client(clock)
    assert one.client_id != two.client_id and one_secret != two_secret


def test_a_public_client_has_no_secret_and_authenticates_with_none(ctx, clock):
    client, secret = add_client(clock, ["com.example.photos:/callback"], public=True)
    assert secret is None
    row = db.session.get(Client, client.client_id)
    assert row.secret_hash is None and row.is_public
    assert row.check_endpoint_auth_method("none", "token")
    assert not row.check_endpoint_auth_method("client_secret_post", "token")
    assert row.check_client_secret("") is False


def test_a_client_gets_the_code_and_refresh_grants_and_its_scopes(ctx, clock):
    client, _ = add_client(clock, scope="openid email")
    assert client.grant_types == ["authorization_code", "refresh_token"]
    assert client.scope == "openid email"
    assert client.check_redirect_uri("https://photos.example.com/callback")
    assert not client.check_redirect_uri("https://photos.example.com/callback/")


@pytest.mark.parametrize(
    "uri",
    [
        "https://photos.example.com/callback",
        "https://photos.example.com:8443/cb?tenant=1",
        "http://127.0.0.1:9999/callback",
        "http://127.0.0.1/callback",
        "http://localhost:3000/cb",
        "http://[::1]:8080/cb",
        "com.example.app:/cb",
        "com.example.app:/oauth2redirect/example-provider",
    ],
)
def test_acceptable_redirect_uris(ctx, clock, uri):
    client, _ = add_client(clock, [uri], public=uri.startswith("com."))
    assert client.redirect_uris == [uri]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://photos.example.com/callback", "must use https"),
        ("http://192.168.1.20/callback", "must use https"),
        ("http://localhost.example.com/cb", "must use https"),
        ("https://photos.example.com/callback#frag", "must not contain a fragment"),
        ("https://photos.example.com/callback#", "must not contain a fragment"),
        ("javascript:alert(document.cookie)", "not an acceptable URI"),
        ("JavaScript:alert(1)", "not an acceptable URI"),
        ("data:text/html,<script>alert(1)</script>", "not an acceptable URI"),
        ("file:///etc/passwd", "not an acceptable URI"),
        ("myapp:/cb", "not an acceptable URI"),
        ("/callback", "not an acceptable URI"),
        ("https:///callback", "not an acceptable URI"),
        ("", "not an acceptable URI"),
    ],
)
def test_unsafe_redirect_uris_are_refused_with_the_reason(uri, message):
    with pytest.raises(AccountError, match=message):
        refused_client([uri])


def test_every_redirect_uri_is_checked_not_only_the_first():
    with pytest.raises(AccountError, match="must use https"):
        refused_client(["https://ok.example.com/cb", "http://evil.example.com/cb"])


def test_logout_uris_are_refused_by_the_same_rules():
    with pytest.raises(AccountError, match="post-logout redirect URI must use https"):
        refused_client(post_logout_redirect_uris=["http://photos.example.com/bye"])
    with pytest.raises(AccountError, match="back-channel logout URI must not contain a fragment"):
        refused_client(backchannel_logout_uri="https://photos.example.com/bcl#x")
    with pytest.raises(AccountError, match="back-channel logout URI is not an acceptable URI"):
        refused_client(backchannel_logout_uri="javascript:alert(1)")


def test_safe_logout_uris_are_kept(ctx, clock):
    client, _ = add_client(
        clock, post_logout_redirect_uris=["https://photos.example.com/bye"],
        backchannel_logout_uri="https://photos.example.com/bcl",
    )
    assert client.post_logout_redirect_uris == ["https://photos.example.com/bye"]
    assert client.backchannel_logout_uri == "https://photos.example.com/bcl"


@pytest.mark.parametrize("scope", ["openid offline_access", "openid superpowers", "openid email write:all"])
def test_unknown_scopes_are_refused_and_named(scope):
    unknown = scope.split()[-1]
    with pytest.raises(AccountError, match=f"unknown scope\\(s\\): {unknown}"):
        refused_client(scope=scope)


def test_a_client_needs_a_redirect_uri_unless_it_is_a_resource_server(ctx, clock):
    with pytest.raises(AccountError, match="at least one --redirect-uri"):
        refused_client([])
    api, secret = add_client(clock, [], resource_server=True)
    assert secret is not None and api.grant_types == [] and api.resource_server


def test_a_resource_server_cannot_be_public():
    with pytest.raises(AccountError, match="resource servers and machine clients authenticate"):
        refused_client([], resource_server=True, public=True)


def test_only_supported_id_token_algorithms_are_accepted(ctx, clock):
    with pytest.raises(AccountError, match="RS256 or ES256"):
        refused_client(id_token_alg="HS256")
    assert add_client(clock, id_token_alg="ES256")[0].id_token_signed_response_alg == "ES256"
