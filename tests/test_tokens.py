"""Token families, refresh rotation and reuse, one-time codes, and the one answer to
"is this token still good?" that introspection, refresh and userinfo share."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from idp import passwords, sessions, tokens
from idp.models import (
    AuditEvent,
    AuthorizationCode,
    Client,
    EndReason,
    LoginSession,
    RefreshToken,
    TokenFamily,
    User,
    db,
)
from idp.sessions import Origin
from tests.flows import start_session

ORIGIN = Origin(ip="203.0.113.7", device_label="Firefox on Linux", device_type="desktop")
REFRESH_LIFETIME = timedelta(hours=720)
CODE_LIFETIME = timedelta(seconds=60)
SECOND = timedelta(seconds=1)

def family_active(family_id: str, now) -> bool:
    """The family's standing as introspection, userinfo and refresh read it, judged by the
    one rule (``Holder.active``)."""
    found = tokens.load_holder(family_id, "no-such-jti")
    return found is not None and found[0].active(now)


@pytest.fixture

def ada(ctx, make_user) -> User:
    return db.session.scalar(sa.select(User).where(User.sub == make_user()))


@pytest.fixture
def photos(ctx, make_client) -> Client:
    return db.session.get(Client, make_client("Photos").client_id)


@pytest.fixture
def mail(ctx, make_client) -> Client:
    return db.session.get(Client, make_client("Mail").client_id)


@pytest.fixture
def login(ctx, clock, ada) -> LoginSession:
    started = start_session(ada, ORIGIN, now=clock.now())
    db.session.commit()
    return started.session


@pytest.fixture
def family(ctx, clock, login, photos) -> TokenFamily:
    family = tokens.start_family(session=login, client=photos, scope="openid email", now=clock.now())
    db.session.commit()
    return family


def refresh(family: TokenFamily, clock, lifetime: timedelta = REFRESH_LIFETIME) -> str:
    value = tokens.issue_refresh(tokens.Holder.of(family, issuing=True), now=clock.now(), lifetime=lifetime)
    db.session.commit()
    return value


def code_for(session: LoginSession, client: Client, clock) -> str:
    value = passwords.new_token()[2]
    tokens.save_code(
        value, client=client, session=session, redirect_uri=client.redirect_uris[0],
        scope="openid email", nonce="n-0S6_WzA2Mj", code_challenge="c" * 43,
        code_challenge_method="S256", now=clock.now(), lifetime=CODE_LIFETIME,
    )
    db.session.commit()
    return value


def exchange(value: str, client: Client, clock) -> tuple[tokens.PresentedCode, TokenFamily]:
    """What the authorization-code grant does with a good code."""
    claim = tokens.claim_code(value, client.client_id, now=clock.now(),
                              family_id=passwords.new_id())
    assert claim.row is not None and not claim.reused
    holder = tokens.code_standing(claim.row)
    assert holder.client_id == client.client_id and holder.active(clock.now())
    tokens.open_family(holder, now=clock.now())
    db.session.commit()
    return claim.row, db.session.get(TokenFamily, claim.row.family_id)


def events(name: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == name)))


def fresh(model, key):
    db.session.expire_all()
    return db.session.get(model, key)


# -- families ------------------------------------------------------------------------------------


def test_a_family_belongs_to_one_session_one_client_and_one_user(ctx, clock, login, photos, family):
    row = fresh(TokenFamily, family.id)
    assert (row.session_id, row.client_id, row.user_id) == (login.id, photos.client_id, login.user_id)
    assert row.scope == "openid email"
    assert row.created_at == row.last_issued_at == clock.now()
    assert row.revoked_at is None
    assert family_active(row.id, clock.now())


def test_a_client_credentials_family_has_no_session_and_stays_active(ctx, clock, photos):
    family = tokens.start_family(session=None, client=photos, scope="", now=clock.now())
    db.session.commit()
    clock.advance(days=60)
    row = fresh(TokenFamily, family.id)
    assert row.session_id is None and row.user_id is None
    assert family_active(row.id, clock.now())
    assert tokens.Holder.of(row).deadline() is None


# -- is this token active? -----------------------------------------------------------------------


def test_nothing_is_active_without_a_family(ctx, clock):
    assert family_active("missing", clock.now()) is False


def test_a_revoked_family_is_inactive(ctx, clock, family):
    assert tokens.revoke_family(family.id, "revoked_by_client", now=clock.now()) is True
    db.session.commit()
    row = fresh(TokenFamily, family.id)
    assert (row.revoked_at, row.revoke_reason) == (clock.now(), "revoked_by_client")
    assert family_active(row.id, clock.now()) is False


def test_a_family_is_inactive_once_its_session_ended(ctx, clock, login, family):
    sessions.end(login, EndReason.LOGOUT, now=clock.now(), actor="user:x")
    db.session.commit()
    assert family_active(family.id, clock.now()) is False


def test_a_family_is_inactive_the_moment_its_session_passes_a_deadline_even_unmarked(
    ctx, clock, login, family
):
    clock.advance(hours=2, seconds=-1)
    assert family_active(family.id, clock.now()) is True
    clock.advance(seconds=1)
    row = fresh(TokenFamily, family.id)
    assert family_active(row.id, clock.now()) is False
    # Nobody wrote anything: the answer comes from the current policy alone.
    assert row.revoked_at is None
    assert fresh(LoginSession, login.id).ended_at is None


def test_a_family_is_inactive_when_its_session_is_under_a_newly_stricter_policy(
    ctx, clock, login, family
):
    clock.advance(minutes=20)
    login.account.idle_timeout = 15 * 60
    db.session.commit()
    assert family_active(family.id, clock.now()) is False


def test_a_family_of_a_disabled_client_is_inactive(ctx, clock, photos, family):
    photos.disabled_at = clock.now()
    db.session.commit()
    assert family_active(family.id, clock.now()) is False


def test_revoking_a_family_twice_keeps_the_first_revocation(ctx, clock, family):
    assert tokens.revoke_family(family.id, "revoked_by_client", now=clock.now()) is True
    db.session.commit()
    first = clock.now()
    clock.advance(minutes=5)
    assert tokens.revoke_family(family.id, "refresh_reuse", now=clock.now()) is False
    db.session.commit()
    row = fresh(TokenFamily, family.id)
    assert (row.revoked_at, row.revoke_reason) == (first, "revoked_by_client")


def test_revoking_an_unknown_family_reports_nothing_revoked(ctx, clock):
    assert tokens.revoke_family(passwords.new_id(), "x", now=clock.now()) is False


def test_the_session_deadline_follows_activity(ctx, clock, login, family):
    assert tokens.Holder.of(family).deadline() == login.created_at + timedelta(hours=2)
    clock.advance(minutes=30)
    sessions.touch(login, clock.now(), "192.0.2.1", timedelta(seconds=0))
    db.session.commit()
    assert tokens.Holder.of(fresh(TokenFamily, family.id)).deadline() == clock.now() + timedelta(hours=2)


# -- refresh tokens ------------------------------------------------------------------------------


def test_a_refresh_token_is_stored_only_as_a_hash(ctx, clock, family):
    value = refresh(family, clock)
    row_id, secret = passwords.split_token(value)
    row = fresh(RefreshToken, row_id)
    assert row.family_id == family.id
    assert row.secret_hash == passwords.hash_secret(secret) and secret not in row.secret_hash


def test_a_refresh_token_lives_for_its_lifetime_when_the_session_outlives_it(ctx, clock, family):
    value = refresh(family, clock, lifetime=timedelta(hours=1))
    row = fresh(RefreshToken, passwords.split_token(value)[0])
    assert row.issued_at == clock.now()
    assert row.expires_at == clock.now() + timedelta(hours=1)


def test_a_refresh_token_never_outlives_its_sessions_maximum_duration(ctx, clock, login, family):
    clock.advance(hours=1)
    value = refresh(family, clock)  # asks for 720 h; the session has 23 h left
    row = fresh(RefreshToken, passwords.split_token(value)[0])
    assert row.expires_at == login.created_at + timedelta(hours=24)


def test_the_refresh_cap_uses_the_accounts_current_duration(ctx, clock, login, family):
    login.account.max_session_duration = 8 * 3600
    login.account.idle_timeout = 3600
    db.session.commit()
    value = refresh(fresh(TokenFamily, family.id), clock)
    row = fresh(RefreshToken, passwords.split_token(value)[0])
    assert row.expires_at == login.created_at + timedelta(hours=8)


def test_a_refresh_token_rotates_once(ctx, clock, family):
    value = refresh(family, clock)
    clock.advance(minutes=5)
    claim = tokens.claim_refresh(value, now=clock.now())
    db.session.commit()
    assert claim.row is not None and claim.reused is False
    assert claim.row.family_id == family.id
    assert fresh(RefreshToken, passwords.split_token(value)[0]).rotated_at == clock.now()


def test_presenting_a_rotated_refresh_token_again_revokes_the_whole_family(ctx, clock, family):
    stolen = refresh(family, clock)
    clock.advance(minutes=5)
    assert tokens.claim_refresh(stolen, now=clock.now()).row is not None  # the client rotates
    successor = refresh(fresh(TokenFamily, family.id), clock)
    clock.advance(minutes=1)

    replay = tokens.claim_refresh(stolen, now=clock.now(), ip="192.0.2.66")
    db.session.commit()

    assert replay.row is None and replay.reused is True
    row = fresh(TokenFamily, family.id)
    assert (row.revoked_at, row.revoke_reason) == (clock.now(), "refresh_reuse")
    assert family_active(row.id, clock.now()) is False
    # The legitimate client's newer token is dead too: it belongs to the same family.
    newer = tokens.claim_refresh(successor, now=clock.now())
    assert newer.row is not None and newer.row.holder.active(clock.now()) is False
    [event] = events("refresh.reused")
    assert (event.session_id, event.client_id, event.user_id) == (
        family.session_id, family.client_id, family.user_id
    )
    assert event.ip == "192.0.2.66" and event.at == clock.now()
    assert event.detail == {"family_revoked": True}


def test_a_refresh_token_is_accepted_one_second_before_its_expiry(ctx, clock, family):
    value = refresh(family, clock, lifetime=timedelta(hours=1))
    clock.advance(hours=1, seconds=-1)
    assert tokens.claim_refresh(value, now=clock.now()).row is not None


def test_a_refresh_token_is_refused_exactly_at_its_expiry(ctx, clock, family):
    value = refresh(family, clock, lifetime=timedelta(hours=1))
    clock.advance(hours=1)
    claim = tokens.claim_refresh(value, now=clock.now())
    db.session.commit()
    assert claim.row is None and claim.reused is False
    assert fresh(RefreshToken, passwords.split_token(value)[0]).rotated_at is None
    assert events("refresh.reused") == []


def test_two_refreshes_racing_with_one_token_exactly_one_wins_and_the_other_is_reuse(
    app, ctx, clock, family
):
    value = refresh(family, clock)
    start = threading.Barrier(2)
    claims: list[tokens.Claim] = []
    errors: list[BaseException] = []

    def present() -> None:
        try:
            with app.app_context():
                start.wait(timeout=10)
                claim = tokens.claim_refresh(value, now=clock.now())
                db.session.commit()
                claims.append(claim)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    racers = [threading.Thread(target=present) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=30)

    assert errors == []
    assert sorted((c.row is not None, c.reused) for c in claims) == [(False, True), (True, False)]
    assert fresh(TokenFamily, family.id).revoke_reason == "refresh_reuse"
    assert len(events("refresh.reused")) == 1


@pytest.mark.parametrize("bad", ["", "junk", "a" * 100])
def test_malformed_refresh_tokens_claim_nothing(ctx, clock, bad):
    assert tokens.claim_refresh(bad, now=clock.now()) == tokens.Claim()


def test_a_refresh_token_with_a_wrong_secret_claims_nothing_and_is_not_reuse(ctx, clock, family):
    value = refresh(family, clock)
    forged = f"{passwords.split_token(value)[0]}.{passwords.new_token()[1]}"
    assert tokens.claim_refresh(forged, now=clock.now()) == tokens.Claim()
    db.session.commit()
    assert family_active(family.id, clock.now())
    assert tokens.claim_refresh(value, now=clock.now()).row is not None


# -- authorization codes -------------------------------------------------------------------------


def test_a_code_is_stored_hashed_and_bound_to_the_session(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    row_id, secret = passwords.split_token(value)
    row = fresh(AuthorizationCode, row_id)
    assert row.secret_hash == passwords.hash_secret(secret)
    assert (row.session_id, row.user_id, row.client_id) == (login.id, login.user_id, photos.client_id)
    assert row.auth_time == login.created_at
    assert row.expires_at == clock.now() + CODE_LIFETIME
    assert row.nonce == "n-0S6_WzA2Mj" and row.amr == ["pwd"]


def test_a_code_can_be_exchanged_once(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    clock.advance(seconds=3)
    claim = tokens.claim_code(value, photos.client_id, now=clock.now())
    db.session.commit()
    assert claim.row is not None and claim.reused is False
    assert claim.row.used_at == clock.now()
    assert fresh(AuthorizationCode, claim.row.id).used_at == clock.now()


def test_a_code_issued_to_another_client_is_refused(ctx, clock, login, photos, mail):
    value = code_for(login, photos, clock)
    claim = tokens.claim_code(value, mail.client_id, now=clock.now())
    db.session.commit()
    assert claim.row is None and claim.reused is False
    assert fresh(AuthorizationCode, passwords.split_token(value)[0]).family_id is None


def test_a_code_is_refused_exactly_at_its_expiry(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    clock.advance(CODE_LIFETIME)
    claim = tokens.claim_code(value, photos.client_id, now=clock.now())
    db.session.commit()
    assert claim.row is None and claim.reused is False
    assert events("code.reused") == []


def test_a_code_is_accepted_one_second_before_its_expiry(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    clock.advance(CODE_LIFETIME - SECOND)
    assert tokens.claim_code(value, photos.client_id, now=clock.now()).row is not None


def test_a_code_with_a_wrong_secret_is_refused_and_stays_usable(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    forged = f"{passwords.split_token(value)[0]}.{passwords.new_token()[1]}"
    assert tokens.claim_code(forged, photos.client_id, now=clock.now()) == tokens.Claim()
    assert tokens.claim_code(value, photos.client_id, now=clock.now()).row is not None


def test_a_code_used_twice_revokes_what_the_first_exchange_produced(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    _code, family = exchange(value, photos, clock)
    refresh_value = refresh(family, clock)
    clock.advance(seconds=10)

    replay = tokens.claim_code(value, photos.client_id, now=clock.now(), ip="192.0.2.66")
    db.session.commit()

    assert replay.row is None and replay.reused is True
    row = fresh(TokenFamily, family.id)
    assert (row.revoked_at, row.revoke_reason) == (clock.now(), "code_reuse")
    assert family_active(row.id, clock.now()) is False
    rotated = tokens.claim_refresh(refresh_value, now=clock.now())
    assert rotated.row is None or not rotated.row.holder.active(clock.now())
    [event] = events("code.reused")
    assert (event.session_id, event.client_id, event.user_id) == (login.id, photos.client_id, login.user_id)
    assert event.ip == "192.0.2.66" and event.detail == {"family_revoked": True}
    # The session itself lives on: only that authorization is burned.
    assert fresh(LoginSession, login.id).ended_at is None


def test_a_code_replayed_after_its_expiry_still_counts_as_reuse(ctx, clock, login, photos):
    value = code_for(login, photos, clock)
    _code, family = exchange(value, photos, clock)
    clock.advance(minutes=5)
    assert tokens.claim_code(value, photos.client_id, now=clock.now()).reused is True
    db.session.commit()
    assert fresh(TokenFamily, family.id).revoke_reason == "code_reuse"


@pytest.mark.parametrize("bad", ["", "junk", "x." + "y" * 43, "a" * 100])
def test_malformed_codes_claim_nothing(ctx, clock, photos, bad):
    assert tokens.claim_code(bad, photos.client_id, now=clock.now()) == tokens.Claim()


# -- access token claims -------------------------------------------------------------------------


def test_access_token_claims_name_the_family_session_and_client(ctx, clock, login, photos, family):
    claims = tokens.access_token_claims(
        issuer="https://id.example.com", holder=tokens.Holder.of(family), subject=login.user.sub,
        now=clock.now(), expires_in=600,
    )
    now = int(clock.now().timestamp())
    assert claims["fam"] == family.id and claims["sid"] == login.id
    assert claims["aud"] == claims["client_id"] == photos.client_id
    assert claims["scope"] == "openid email"
    assert claims["iat"] == claims["nbf"] == now and claims["exp"] == now + 600
    assert claims["auth_time"] == int(login.created_at.timestamp())
    other = tokens.access_token_claims(
        issuer="https://id.example.com", holder=tokens.Holder.of(family), subject=login.user.sub,
        now=clock.now(), expires_in=600,
    )
    assert other["jti"] != claims["jti"]
