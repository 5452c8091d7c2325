"""Attacks on codes and refresh tokens (RFC 9700 §4.5, §4.8, §4.13, §4.14; RFC 6749
§4.1.2, §10.5; RFC 7636; RFC 7662 §4): code replay revokes what the first use
produced; refresh-token reuse revokes the family; racing refreshes with one token let
exactly one through; PKCE cannot be downgraded; codes, refresh tokens and access
tokens of one client are worthless to another."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from idp.models import LoginSession, RefreshToken, TokenFamily, User, db
from tests.compact import claims_of
from tests.security.conftest import ADA, Browser, Grant, audit_events, pkce_pair, read


@pytest.fixture
def world(app, ada, party, signed_in):
    return party("Photos"), party("Mail"), signed_in(ADA)


def error_of(response) -> str:
    assert response.mimetype == "application/json", response.get_data(as_text=True)[:200]
    assert "no-store" in response.headers.get("Cache-Control", "")
    return response.get_json()["error"]


# -- code replay ---------------------------------------------------------------------------------


def test_code_replay_is_refused_and_revokes_the_tokens_of_the_first_use(app, world):
    photos, _, browser = world
    grant = photos.code(browser)
    first = photos.exchange(grant)
    assert first.status_code == 200
    tokens = first.get_json()
    assert photos.active(tokens["access_token"])
    replay = photos.exchange(grant)
    assert replay.status_code == 400 and error_of(replay) == "invalid_grant"
    assert not photos.active(tokens["access_token"])
    assert not photos.active(tokens["refresh_token"])
    assert error_of(photos.refresh(tokens["refresh_token"])) == "invalid_grant"
    assert photos.userinfo(tokens["access_token"]).status_code == 401
    assert [e.detail.get("family_revoked") for e in audit_events(app, "code.reused")] == [True]


def test_a_code_expires_after_its_lifetime(app, clock, world):
    photos, _, browser = world
    grant = photos.code(browser)
    clock.advance(seconds=61)
    late = photos.exchange(grant)
    assert late.status_code == 400 and error_of(late) == "invalid_grant"


def test_a_code_is_bound_to_its_redirect_uri(world):
    photos, _, browser = world
    grant = photos.code(browser)
    for other in ("http://127.0.0.1:9999/callback/", "http://evil.example/callback", None):
        response = photos.exchange(grant, redirect_uri=other)
        assert response.status_code == 400, other
        assert error_of(response) in ("invalid_grant", "invalid_request")
    assert photos.exchange(grant).status_code == 200


def test_a_code_dies_with_its_session(app, world):
    photos, _, browser = world
    grant = photos.code(browser)
    browser.post("/logout", data={"csrf_token": browser.csrf()})
    response = photos.exchange(grant)
    assert response.status_code == 400 and error_of(response) == "invalid_grant"


# -- refresh tokens -------------------------------------------------------------------------------


def test_refresh_reuse_is_refused_and_revokes_the_whole_family(app, world):
    photos, _, browser = world
    tokens = photos.tokens(browser)
    rotated = photos.refresh(tokens["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.get_json()
    assert second["refresh_token"] != tokens["refresh_token"]
    reuse = photos.refresh(tokens["refresh_token"])
    assert reuse.status_code == 400 and error_of(reuse) == "invalid_grant"
    # The legitimate holder's newer tokens die too: the thief and the victim are indistinguishable.
    assert error_of(photos.refresh(second["refresh_token"])) == "invalid_grant"
    assert not photos.active(second["access_token"])
    assert not photos.active(tokens["access_token"])
    assert [e.detail.get("family_revoked") for e in audit_events(app, "refresh.reused")] == [True]


def test_racing_refreshes_with_one_token_let_exactly_one_through(app, world):
    photos, _, browser = world
    tokens = photos.tokens(browser)
    count = 12
    barrier = threading.Barrier(count, timeout=30)
    results: list = [None] * count

    def race(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        results[i] = client.post("/oauth/token", auth=photos.auth, data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})

    threads = [threading.Thread(target=race, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] + [400] * (count - 1), [r.get_json() for r in results]
    assert {r.get_json()["error"] for r in results if r.status_code == 400} == {"invalid_grant"}
    winner = next(r.get_json() for r in results if r.status_code == 200)
    # The losers were reuse: the family is revoked, the winner's new tokens included.
    assert error_of(photos.refresh(winner["refresh_token"])) == "invalid_grant"
    assert not photos.active(winner["access_token"])


def test_a_disabled_user_cannot_refresh_even_if_a_session_were_left_open(app, world, clock):
    """Disabling ends every session; the grant also refuses a disabled user on its own, so
    a session left open by any other path (here a direct database write) issues nothing,
    and nothing is used up. The refusal ends the session ("disabled"): what was once
    inactive stays so, even after the user is enabled again."""
    photos, _, browser = world
    tokens = photos.tokens(browser)
    with app.app_context():
        db.session.execute(sa.update(User).where(User.email == ADA)
                           .values(disabled_at=clock.now()))
        db.session.commit()
    refused = photos.refresh(tokens["refresh_token"])
    assert refused.status_code == 400 and error_of(refused) == "invalid_grant"
    assert refused.get_json()["error_description"] == "The user is disabled."
    with app.app_context():
        db.session.execute(sa.update(User).where(User.email == ADA).values(disabled_at=None))
        db.session.commit()
    again = photos.refresh(tokens["refresh_token"])
    assert again.status_code == 400 and error_of(again) == "invalid_grant"
    assert again.get_json()["error_description"] == "The grant has been revoked."
    with app.app_context():
        session = db.session.scalar(sa.select(LoginSession).join(User).where(User.email == ADA))
        assert session.end_reason == "disabled"
        assert db.session.scalar(sa.select(sa.func.count()).select_from(RefreshToken).where(
            RefreshToken.rotated_at.is_not(None))) == 0  # nothing was used up


def test_refresh_cannot_widen_the_scope(world):
    photos, _, browser = world
    tokens = photos.tokens(browser, scope="openid")
    for scope in ("openid profile", "openid email sessions admin", "admin"):
        wider = photos.token({"grant_type": "refresh_token",
                              "refresh_token": tokens["refresh_token"], "scope": scope})
        assert wider.status_code == 400 and error_of(wider) == "invalid_scope", scope
    narrow = photos.refresh(tokens["refresh_token"]).get_json()
    assert narrow["scope"] == "openid"


# -- PKCE downgrade ---------------------------------------------------------------------------------


def test_a_code_issued_with_a_challenge_cannot_be_redeemed_without_the_verifier(world):
    photos, _, browser = world
    grant = photos.code(browser)
    # (Its last character changed: to "B" when it is already "A", one verifier in 64.)
    altered = grant.verifier[:-1] + ("B" if grant.verifier.endswith("A") else "A")
    for verifier in (None, "", pkce_pair()[0], altered, "short", "a" * 129,
                     grant.verifier + "\u00e9"):
        response = photos.exchange(Grant(grant.code, None), code_verifier=verifier)
        assert response.status_code == 400, verifier
        assert error_of(response) in ("invalid_request", "invalid_grant"), verifier
    assert photos.exchange(grant).status_code == 200


def test_a_code_issued_without_a_challenge_cannot_be_redeemed_with_a_verifier(world):
    photos, _, browser = world
    grant = photos.code(browser, pkce=False)
    injected = photos.exchange(Grant(grant.code, pkce_pair()[0]))
    assert injected.status_code == 400 and error_of(injected) == "invalid_request"


def test_plain_and_unknown_challenge_methods_are_refused_and_no_code_is_issued(world):
    photos, _, browser = world
    for method in ("plain", "PLAIN", "s256", "S512", "none", ""):
        url = photos.authorize_url(code_challenge="a" * 43, code_challenge_method=method)
        response = browser.get(url)
        location = response.headers.get("Location", "")
        assert "code=" not in location, (method, location)
        assert "error=invalid_request" in location or response.status_code == 400, method
    implied_plain = browser.get(photos.authorize_url(code_challenge="a" * 43))
    assert "error=invalid_request" in implied_plain.headers["Location"]


def test_a_public_client_must_use_pkce_at_both_ends(app, party, world):
    _, _, browser = world
    spa = party("SPA", public=True, redirect_uri="http://127.0.0.1:8765/cb")
    without = browser.get(spa.authorize_url())
    assert "error=invalid_request" in without.headers["Location"]
    assert "code=" not in without.headers["Location"]
    grant = spa.code(browser)
    stripped = spa.exchange(Grant(grant.code, None))
    assert stripped.status_code == 400 and error_of(stripped) == "invalid_request"
    assert spa.exchange(grant).status_code == 200


# -- substitution across clients --------------------------------------------------------------------


def test_another_clients_code_is_worthless(world):
    photos, mail, browser = world
    grant = photos.code(browser)
    stolen = mail.exchange(grant, redirect_uri=mail.redirect_uri)
    assert stolen.status_code == 400 and error_of(stolen) == "invalid_grant"
    same_uri = mail.exchange(grant)
    assert same_uri.status_code == 400 and error_of(same_uri) == "invalid_grant"
    # Naming the victim client without its secret is not authentication.
    posed = mail.http.post("/oauth/token", data={
        "grant_type": "authorization_code", "code": grant.code, "client_id": photos.client_id,
        "redirect_uri": photos.redirect_uri, "code_verifier": grant.verifier})
    assert posed.status_code == 401 and error_of(posed) == "invalid_client"
    assert photos.exchange(grant).status_code == 200


def test_another_clients_refresh_token_is_worthless(world):
    photos, mail, browser = world
    tokens = photos.tokens(browser)
    stolen = mail.refresh(tokens["refresh_token"])
    assert stolen.status_code == 400 and error_of(stolen) == "invalid_grant"
    assert photos.refresh(tokens["refresh_token"]).status_code == 200


def test_another_clients_tokens_are_inactive_at_introspection_and_survive_its_revocation(
        app, world, party):
    photos, mail, browser = world
    api = party("Orders API", resource_server=True)
    tokens = photos.tokens(browser)
    for prober in (mail, api):
        for token in (tokens["access_token"], tokens["refresh_token"], tokens["id_token"]):
            answer = prober.introspect(token)
            assert answer.status_code == 200 and answer.get_json() == {"active": False}
        prober.revoke(tokens["access_token"])
        prober.revoke(tokens["refresh_token"], token_type_hint="refresh_token")
    assert photos.active(tokens["access_token"])
    assert photos.active(tokens["refresh_token"])
    assert read(app, lambda: db.session.query(TokenFamily).filter(
        TokenFamily.revoked_at.is_not(None)).count()) == 0


def test_a_resource_server_sees_a_token_only_when_it_is_in_the_audience(app, world, party):
    """An audience-restricted token (signed by the provider, as one naming the API would be)
    is active for a resource server in its aud, and for nobody else but the client."""
    photos, mail, browser = world
    api = party("Orders API", resource_server=True)
    plain_client = party("Not a resource server")
    tokens = photos.tokens(browser)
    claims = claims_of(tokens["access_token"])
    with app.app_context():
        services = app.extensions["idp"]
        scoped = services.signer.sign({**claims, "aud": [photos.client_id, api.client_id,
                                                         plain_client.client_id]},
                                      typ="at+jwt", now=services.clock.now())
    assert api.introspect(scoped).get_json()["active"] is True
    assert plain_client.introspect(scoped).get_json() == {"active": False}
    assert mail.introspect(scoped).get_json() == {"active": False}
    assert api.introspect(tokens["access_token"]).get_json() == {"active": False}


def test_introspection_and_revocation_need_client_authentication(world):
    photos, _, browser = world
    tokens = photos.tokens(browser)
    for auth in (None, (photos.client_id, "wrong"), ("nobody", "x"), (photos.client_id, "")):
        answer = photos.http.post("/oauth/introspect", data={"token": tokens["access_token"]},
                                  auth=auth)
        assert answer.status_code == 401 and error_of(answer) == "invalid_client", auth
        revoked = photos.http.post("/oauth/revoke", data={"token": tokens["refresh_token"]},
                                   auth=auth)
        assert revoked.status_code == 401, auth
    assert photos.active(tokens["refresh_token"])


def test_client_credentials_cannot_obtain_user_scopes(party):
    batch = party("batch", client_credentials=True)
    for scope in ("openid", "sessions", "admin", "profile email"):
        response = batch.token({"grant_type": "client_credentials", "scope": scope})
        assert response.status_code == 400 and error_of(response) == "invalid_scope", scope


# -- no token outlives its session; no offline_access -----------------------------------------


def test_offline_access_is_not_offered_and_cannot_be_obtained(world):
    """Not offered; asked for, it is ignored as a value the provider does not understand
    (OIDC Core 3.1.2.1), so it never reaches a token: no token outlives its session."""
    photos, _, browser = world
    discovery = photos.http.get("/.well-known/openid-configuration").get_json()
    assert "offline_access" not in discovery["scopes_supported"]
    for scope in ("openid offline_access", "openid profile offline_access"):
        tokens = photos.tokens(browser, scope=scope)
        assert tokens["scope"] == scope.replace(" offline_access", ""), scope


def test_tokens_never_outlive_their_session(app, clock, make_account, make_user, party):
    short = make_account("short", max_session_duration=300, idle_timeout=300)
    make_user("sam@example.com", account_id=short)
    photos = party("Photos")
    browser = Browser(app)
    browser.login("sam@example.com")
    started = clock.now()
    tokens = photos.tokens(browser)
    claims = claims_of(tokens["access_token"])
    assert claims["exp"] <= started.timestamp() + 300  # capped by the 5-minute session
    assert tokens["expires_in"] <= 300
    refresh = photos.introspect(tokens["refresh_token"]).get_json()
    assert refresh["active"] and refresh["exp"] <= started.timestamp() + 300
    clock.advance(seconds=299)
    assert photos.active(tokens["access_token"])
    clock.advance(seconds=1)
    assert not photos.active(tokens["access_token"])
    assert not photos.active(tokens["refresh_token"])
    assert error_of(photos.refresh(tokens["refresh_token"])) == "invalid_grant"
    assert photos.userinfo(tokens["access_token"]).status_code == 401


def test_id_tokens_never_outlive_their_session_either(app, clock, make_account, make_user,
                                                     party):
    """An ID token (1 h by default) issued under a 5-minute session expires with it,
    however late in the session it is issued."""
    short = make_account("short", max_session_duration=300, idle_timeout=300)
    make_user("sam@example.com", account_id=short)
    photos = party("Photos")
    browser = Browser(app)
    browser.login("sam@example.com")
    started = int(clock.now().timestamp())
    tokens = photos.tokens(browser)
    assert claims_of(tokens["id_token"])["exp"] == started + 300
    clock.advance(seconds=200)
    later = photos.tokens(browser)
    assert claims_of(later["id_token"])["exp"] == started + 300  # the session's end
    long = make_account("long")
    make_user("lea@example.com", account_id=long)
    other = Browser(app)
    other.login("lea@example.com")
    issued = int(clock.now().timestamp())
    assert claims_of(photos.tokens(other)["id_token"])["exp"] == issued + 3600  # the setting


def test_ending_the_session_kills_every_token_at_once(world):
    photos, mail, browser = world
    first, second = photos.tokens(browser), mail.tokens(browser)
    browser.post(f"/account/sessions/{browser.sid}/end", data={"csrf_token": browser.csrf()})
    for rp, tokens in ((photos, first), (mail, second)):
        assert not rp.active(tokens["access_token"]) and not rp.active(tokens["refresh_token"])
        assert error_of(rp.refresh(tokens["refresh_token"])) == "invalid_grant"
        assert rp.userinfo(tokens["access_token"]).status_code == 401
