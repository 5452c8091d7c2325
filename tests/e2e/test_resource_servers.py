"""Resource servers asking "is this token still good?": introspection (RFC 7662) and
revocation (RFC 7009) over real HTTP, and a resource server written here that
introspects the bearer token on every call. Its answer flips from 200 to 401 the
moment the session behind the token ends, whoever or whatever ends it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import joserfc.jwt as jwt
import pytest
import sqlalchemy as sa
from joserfc.jwk import ECKey, RSAKey
from werkzeug.wrappers import Request, Response

from idp.models import Account, LoginSession, db
from tests.conftest import PASSWORD
from tests.e2e.processes import serving
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e

ADA = "ada@example.com"
ADAM = "adam@example.com"
INACTIVE = {"active": False}


# -- helpers -------------------------------------------------------------------------------------


class ResourceServer:
    """A tiny API: every call introspects its bearer token (authenticating as its own
    client) and answers 200 with the subject, or 401."""

    def __init__(self, introspection_endpoint: str, client_id: str, client_secret: str):
        self.endpoint = introspection_endpoint
        self.auth = (client_id, client_secret)
        self.http = httpx.Client(timeout=10, trust_env=False)
        self.seen: list[dict] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            response = Response("", 401, {"WWW-Authenticate": "Bearer"})
            return response(environ, start_response)
        answer = self.http.post(self.endpoint, data={"token": token}, auth=self.auth)
        answer.raise_for_status()
        body = answer.json()
        self.seen.append(body)
        if not body.get("active"):
            response = Response("", 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        else:
            response = Response(json.dumps({"hello": body["sub"]}), 200,
                                mimetype="application/json")
        return response(environ, start_response)


@contextmanager
def resource_server(rp: RelyingParty):
    api = ResourceServer(rp.metadata["introspection_endpoint"], rp.client_id, rp.client_secret)
    try:
        with serving(api) as port, httpx.Client(timeout=10, trust_env=False) as http:
            yield Api(f"http://127.0.0.1:{port}", http, api)
    finally:
        api.http.close()


@dataclass
class Api:
    url: str
    http: httpx.Client
    server: ResourceServer

    def call(self, access_token: str) -> int:
        return self.http.get(f"{self.url}/photos",
                             headers={"Authorization": f"Bearer {access_token}"}).status_code

    @property
    def last_answer(self) -> dict:
        """What introspection told the resource server on its last call."""
        return self.server.seen[-1]


def unverified(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict, claims: dict, secret: bytes | None) -> str:
    """A compact JWS made by hand: HS256 with ``secret``, or alg "none" without one."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@dataclass
class World:
    live: object
    clock: object
    rp: RelyingParty
    ada: str
    adam: str

    @property
    def base(self) -> str:
        return self.live.url

    def browser(self) -> Browser:
        return Browser(self.base)

    def tokens(self, browser: Browser | None = None, email: str = ADA) -> dict:
        return obtain_tokens(self.rp, browser or self.browser(), email)

    def sign_in(self, email: str) -> Browser:
        browser = self.browser()
        page = browser.login(browser.go(f"{self.base}/login"), email, PASSWORD)
        assert page.status_code == 200 and page.url.path == "/account/sessions", page.text[:300]
        return browser

    def confirm(self, browser: Browser, path: str) -> httpx.Response:
        """A state-changing page: GET shows the confirmation, POST with its CSRF token acts."""
        page = browser.http.get(f"{self.base}{path}")
        assert page.status_code == 200, page.text[:300]
        return browser.go(f"{self.base}{path}", method="POST",
                          data={"csrf_token": csrf_token(page.text)})

    def session_row(self, sid: str) -> LoginSession:
        with self.live.app.app_context():
            row = db.session.get(LoginSession, sid)
            db.session.expunge(row)
            return row


@pytest.fixture
def world(live_server, make_account, make_user, make_client) -> World:
    account = make_account("acme")
    ada = make_user(ADA, account_id=account)
    adam = make_user(ADAM, account_id=account, role="admin", name="Adam Admin")
    # A first-party app whose own API checks its tokens by introspection.
    photos = make_client("Photos", resource_server=True)
    rp = RelyingParty(live_server.url, photos.client_id, photos.client_secret, photos.redirect_uri)
    return World(live_server, live_server.clock, rp, ada, adam)


def sid_of(token: dict) -> str:
    return unverified(token["id_token"])["sid"]


# -- introspection: who may call it, and what an active answer carries ------------------------------


def test_introspection_needs_an_authenticated_client(world):
    token = world.tokens()["access_token"]
    endpoint = world.rp.metadata["introspection_endpoint"]
    http = world.rp.http
    unauthenticated = http.post(endpoint, data={"token": token})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"] == "invalid_client"
    assert "active" not in unauthenticated.json()
    wrong_secret = http.post(endpoint, data={"token": token}, auth=(world.rp.client_id, "nope"))
    assert wrong_secret.status_code == 401
    only_id = http.post(endpoint, data={"token": token, "client_id": world.rp.client_id})
    assert only_id.status_code == 401  # "none" is not an introspection auth method

    basic = http.post(endpoint, data={"token": token},
                      auth=(world.rp.client_id, world.rp.client_secret))
    post = http.post(endpoint, data={"token": token, "client_id": world.rp.client_id,
                                     "client_secret": world.rp.client_secret})
    for answer in (basic, post):
        assert answer.status_code == 200
        assert answer.json()["active"] is True
        assert answer.headers["cache-control"] == "no-store"


def test_active_answers_carry_the_rfc_7662_members(world):
    token = world.tokens()
    id_claims = world.rp.verify_id_token(token["id_token"], None)
    at_claims = unverified(token["access_token"])

    for hint in ({}, {"token_type_hint": "access_token"}):
        body = world.rp.introspect(token["access_token"], **hint).json()
        assert body == {
            "active": True,
            "scope": "openid profile email",
            "client_id": world.rp.client_id,
            "sub": id_claims["sub"],
            "username": ADA,
            "token_type": "Bearer",
            "exp": at_claims["exp"],
            "iat": at_claims["iat"],
            "nbf": at_claims["nbf"],
            "aud": at_claims["aud"],
            "iss": world.base,
            "jti": at_claims["jti"],
            "sid": id_claims["sid"],
        }
        assert body["exp"] - body["iat"] == 600

    for hint in ({}, {"token_type_hint": "refresh_token"}, {"token_type_hint": "access_token"}):
        body = world.rp.introspect(token["refresh_token"], **hint).json()
        assert body["active"] is True, hint
        assert body["token_type"] == "refresh_token"
        assert body["client_id"] == world.rp.client_id
        assert body["sub"] == id_claims["sub"] and body["sid"] == id_claims["sid"]
        assert body["username"] == ADA and body["iss"] == world.base
        assert body["scope"] == "openid profile email"
        assert body["exp"] > body["iat"]


def test_a_wrong_token_type_hint_does_not_hide_an_access_token(world):
    """RFC 7662 §2.1: a hint that does not match makes the server extend its search
    to the other token types; the hint is an optimisation, never a filter."""
    token = world.tokens()
    body = world.rp.introspect(token["access_token"], token_type_hint="refresh_token").json()
    assert body["active"] is True
    assert body["token_type"] == "Bearer" and body["jti"] == unverified(token["access_token"])["jti"]


def test_the_one_query_answers_are_the_full_endpoints_answers(world, monkeypatch):
    """Introspection and userinfo answer their common case in one query, outside Authlib's
    endpoint classes (idp/oauth/introspection.py, endpoints.userinfo_answer). Turned off,
    the full endpoints must answer every case byte for byte the same."""
    from idp.oauth import introspection
    from idp.web import oidc

    token, other = world.tokens(), world.tokens()
    rotated = world.rp.refresh(other["refresh_token"])
    assert rotated.status_code == 200
    cases = [token["access_token"], token["refresh_token"], other["refresh_token"],
             rotated.json()["refresh_token"], rotated.json()["access_token"], "not-a-token",
             token["access_token"][:-4] + "AAAA"]

    def seen(response):
        return (response.status_code, response.content, response.headers.get("Content-Type"),
                response.headers.get("Cache-Control"), response.headers.get("Pragma"))

    def answers():
        introspected = [seen(world.rp.introspect(value)) for value in cases]
        hinted = [seen(world.rp.introspect(value, token_type_hint="refresh_token"))
                  for value in cases]
        userinfo = [seen(world.rp.userinfo(value)) for value in cases]
        return introspected, hinted, userinfo

    answered = []

    def spying(real):
        def call(*args, **kwargs):
            answered.append(real(*args, **kwargs))
            return answered[-1]
        return call

    monkeypatch.setattr(introspection, "answer", spying(introspection.answer))
    monkeypatch.setattr(oidc, "userinfo_answer", spying(oidc.userinfo_answer))
    fast = answers()
    assert sum(a is not None for a in answered) >= 12  # the one-query path did answer
    assert b'"active": true' in fast[0][0][1] and b'"active": false' in fast[0][2][1]
    assert fast[0][0][2:] == ("application/json", "no-store", "no-cache")
    assert fast[2][0][0] == 200 and fast[2][5][0] == 401
    monkeypatch.setattr(introspection, "answer", lambda *args, **kwargs: None)
    monkeypatch.setattr(oidc, "userinfo_answer", lambda *args, **kwargs: None)
    assert answers() == fast


def test_introspection_refuses_a_parameter_named_twice(world):
    """RFC 6749 §3.2: parameters must not be repeated; the answer says which request was bad
    rather than picking one of the two tokens."""
    token = world.tokens()
    response = world.rp.http.post(world.rp.metadata["introspection_endpoint"],
                                  auth=(world.rp.client_id, world.rp.client_secret),
                                  content=urlencode([("token", token["access_token"]),
                                                     ("token", token["refresh_token"])]),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# -- introspection: everything else is exactly {"active": false} -------------------------------------


def test_an_access_token_past_its_exp_is_inactive(world):
    token = world.tokens()
    exp = unverified(token["access_token"])["exp"]
    world.clock.advance(seconds=exp - int(world.clock.now().timestamp()) - 1)
    assert world.rp.introspect(token["access_token"]).json()["active"] is True
    world.clock.advance(seconds=1)
    assert world.rp.introspect(token["access_token"]).json() == INACTIVE
    # The session and the refresh token are fine: only that access token expired.
    assert world.rp.introspect(token["refresh_token"]).json()["active"] is True


def test_tokens_of_a_session_expired_by_policy_are_inactive_and_the_answer_is_recorded(world):
    token = world.tokens()
    sid = sid_of(token)
    signed_in_at = world.session_row(sid).created_at
    world.clock.advance(hours=2, seconds=1)  # the account's idle timeout is 2 h
    assert world.session_row(sid).ended_at is None  # nothing has looked at it yet
    assert world.rp.introspect(token["refresh_token"]).json() == INACTIVE
    assert world.rp.introspect(token["access_token"]).json() == INACTIVE
    # The first "inactive" ended the session as it found it (at its idle deadline), so no
    # later policy change can bring it back.
    row = world.session_row(sid)
    assert (row.ended_at, row.end_reason) == (signed_in_at + timedelta(hours=2), "expired_idle")


def test_a_stricter_policy_makes_unexpired_access_tokens_inactive(world):
    token = world.tokens()
    world.clock.advance(minutes=6)
    assert world.rp.introspect(token["access_token"]).json()["active"] is True
    with world.live.app.app_context():
        account = db.session.scalar(sa.select(Account))
        account.idle_timeout = 5 * 60  # the administrator tightens the policy
        db.session.commit()
    # The access token's own exp (10 min) is still ahead; its session is not.
    assert unverified(token["access_token"])["exp"] > world.clock.now().timestamp()
    assert world.rp.introspect(token["access_token"]).json() == INACTIVE
    assert world.rp.introspect(token["refresh_token"]).json() == INACTIVE


def test_unknown_malformed_and_foreign_tokens_are_inactive(world):
    token = world.tokens()
    real = unverified(token["access_token"])
    real_header = header_of(token["access_token"])
    rt_id, _, rt_secret = token["refresh_token"].partition(".")
    stranger = (RSAKey.generate_key(2048, parameters={"kid": real_header["kid"]})
                if real_header["alg"] == "RS256"
                else ECKey.generate_key("P-256", parameters={"kid": real_header["kid"]}))
    jwks = world.live.app.extensions["idp"].keys.jwks(world.clock.now())
    our_public = next(k for k in jwks["keys"] if k["kid"] == real_header["kid"])
    candidates = {
        "garbage": "garbage",
        "dotted garbage": "a.b.c",
        "unknown refresh-shaped": "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
        "refresh with wrong secret": f"{rt_id}.{rt_secret[::-1]}",
        "truncated access token": token["access_token"][:-10],
        "tampered claims": ".".join([token["access_token"].split(".")[0],
                                     b64(json.dumps({**real, "sub": "mallory"}).encode()),
                                     token["access_token"].split(".")[2]]),
        "same claims, another key": jwt.encode(real_header, real, stranger),
        "another issuer": jwt.encode(real_header, {**real, "iss": "https://evil.example"},
                                     stranger),
        "alg none": hand_signed({**real_header, "alg": "none"}, real, None),
        "HS256 keyed with the public key": hand_signed(
            {**real_header, "alg": "HS256"}, real, json.dumps(our_public).encode()),
        "huge": "x" * 20000,
    }
    for name, value in candidates.items():
        answer = world.rp.introspect(value)
        assert answer.status_code == 200, name
        assert answer.json() == INACTIVE, name
    # ... and the real ones are untouched by all that.
    assert world.rp.introspect(token["access_token"]).json()["active"] is True


# -- who may introspect what -----------------------------------------------------------------------


def test_a_token_is_introspectable_by_its_client_or_a_resource_server_in_its_audience(
        world, make_client):
    token = world.tokens()
    mail = make_client("Mail")  # an ordinary relying party
    api = make_client("Orders API", resource_server=True)  # a resource server elsewhere
    introspect = world.rp.introspect
    # Another relying party's token: nothing to see, whether or not it is a resource server.
    for other in (mail, api):
        for value in (token["access_token"], token["refresh_token"]):
            assert introspect(value, auth=(other.client_id, other.client_secret)).json() == INACTIVE
    # A token whose audience names the resource server (signed with the provider's key,
    # as an audience-restricted access token would be).
    claims = unverified(token["access_token"])
    claims["aud"] = [world.rp.client_id, api.client_id, mail.client_id]
    claims["jti"] = claims["jti"][::-1]
    widened = world.live.app.extensions["idp"].signer.sign(claims, alg="RS256", typ="at+jwt",
                                                           now=world.clock.now())
    assert introspect(widened).json()["active"] is True  # its own client, as always
    body = introspect(widened, auth=(api.client_id, api.client_secret)).json()
    assert body["active"] is True and body["client_id"] == world.rp.client_id
    assert api.client_id in body["aud"] and body["sid"] == sid_of(token)
    # In the audience but not registered as a resource server: no.
    assert introspect(widened, auth=(mail.client_id, mail.client_secret)).json() == INACTIVE


# -- revocation --------------------------------------------------------------------------------------


def test_revoking_a_refresh_token_revokes_its_whole_family(world):
    first = world.tokens()
    second = world.rp.refresh(first["refresh_token"]).json()
    assert world.rp.revoke(second["refresh_token"], token_type_hint="refresh_token").status_code == 200
    for value in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert world.rp.introspect(value).json() == INACTIVE
    refused = world.rp.refresh(second["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_revoking_an_access_token_revokes_only_that_token(world):
    first = world.tokens()
    second = world.rp.refresh(first["refresh_token"]).json()
    assert world.rp.revoke(first["access_token"]).status_code == 200
    assert world.rp.introspect(first["access_token"]).json() == INACTIVE
    assert world.rp.introspect(second["access_token"]).json()["active"] is True
    assert world.rp.introspect(second["refresh_token"]).json()["active"] is True
    third = world.rp.refresh(second["refresh_token"])
    assert third.status_code == 200
    assert world.rp.introspect(third.json()["access_token"]).json()["active"] is True
    assert world.rp.revoke(first["access_token"]).status_code == 200  # twice is fine


def test_revocation_with_a_wrong_hint_still_revokes(world):
    """RFC 7009 §2.1: an unmatched hint extends the search to the other token types."""
    token = world.tokens()
    assert world.rp.revoke(token["access_token"], token_type_hint="refresh_token").status_code == 200
    assert world.rp.introspect(token["access_token"]).json() == INACTIVE


def test_revoking_unknown_or_foreign_tokens_answers_200_and_changes_nothing(world, make_client):
    token = world.tokens()
    for value in ("unknown-token", "a.b.c", "AAAA.BBBB"):
        assert world.rp.revoke(value).status_code == 200
    mail = make_client("Mail")
    endpoint = world.rp.metadata["revocation_endpoint"]
    world.rp.http.post(endpoint, data={"token": token["refresh_token"]},
                       auth=(mail.client_id, mail.client_secret))
    world.rp.http.post(endpoint, data={"token": token["access_token"]},
                       auth=(mail.client_id, mail.client_secret))
    assert world.rp.introspect(token["access_token"]).json()["active"] is True
    assert world.rp.introspect(token["refresh_token"]).json()["active"] is True
    unauthenticated = world.rp.http.post(endpoint, data={"token": token["refresh_token"]})
    assert unauthenticated.status_code == 401
    assert world.rp.introspect(token["refresh_token"]).json()["active"] is True


# -- the resource server flips to 401 the moment the session ends --------------------------------------


def test_api_refuses_tokens_once_the_user_ends_the_session_on_the_sessions_page(world):
    phone, laptop = world.browser(), world.browser()
    on_phone = world.tokens(phone)
    on_laptop = world.tokens(laptop)
    with resource_server(world.rp) as api:
        assert api.call(on_phone["access_token"]) == 200
        assert api.call(on_laptop["access_token"]) == 200
        assert api.call("garbage") == 401
        ended = world.confirm(laptop, f"/account/sessions/{sid_of(on_phone)}/end")
        assert "Ended the session on" in ended.text
        assert api.call(on_phone["access_token"]) == 401
        assert api.last_answer == INACTIVE
        assert api.call(on_laptop["access_token"]) == 200  # the other session is untouched
        # The laptop logs itself out from the same page.
        world.confirm(laptop, f"/account/sessions/{sid_of(on_laptop)}/end")
        assert api.call(on_laptop["access_token"]) == 401
    assert world.session_row(sid_of(on_phone)).end_reason == "ended_by_user"
    assert world.session_row(sid_of(on_laptop)).end_reason == "logout"


def test_api_refuses_tokens_once_an_administrator_ends_the_session(world):
    token = world.tokens()
    kept = world.tokens()  # a second session of ada, on another device
    admin = world.sign_in(ADAM)
    with resource_server(world.rp) as api:
        assert api.call(token["access_token"]) == 200
        done = world.confirm(admin, f"/admin/users/{world.ada}/sessions/{sid_of(token)}/end")
        assert f"Ended {ADA}&#39;s session" in done.text
        assert api.call(token["access_token"]) == 401
        assert api.last_answer == INACTIVE
        assert api.call(kept["access_token"]) == 200
    assert world.session_row(sid_of(token)).end_reason == "ended_by_admin"


def test_api_refuses_tokens_once_the_policy_expires_the_session(world):
    token = world.tokens()
    sid = sid_of(token)
    with resource_server(world.rp) as api:
        world.clock.advance(minutes=9)
        assert api.call(token["access_token"]) == 200
        token = world.rp.refresh(token["refresh_token"]).json()  # activity
        world.clock.advance(hours=1, minutes=59)
        still = world.rp.refresh(token["refresh_token"]).json()
        assert api.call(still["access_token"]) == 200
        world.clock.advance(timedelta(hours=2, seconds=1))  # idle past the 2 h timeout
        assert api.call(still["access_token"]) == 401
        assert api.last_answer == INACTIVE
    assert world.session_row(sid).end_reason == "expired_idle"  # recorded by that answer


def test_api_refuses_tokens_once_the_rp_logs_the_user_out(world):
    browser = world.browser()
    token = world.tokens(browser)
    with resource_server(world.rp) as api:
        assert api.call(token["access_token"]) == 200
        page = browser.go(f"{world.base}/oauth/end-session?"
                          f"id_token_hint={token['id_token']}")
        assert page.status_code == 200 and "You are signed out" in page.text
        assert api.call(token["access_token"]) == 401
        assert api.last_answer == INACTIVE
    assert world.session_row(sid_of(token)).end_reason == "logout"


def test_a_resource_indicator_puts_the_resource_server_in_the_audience(
        live_server, make_user, make_client):
    """RFC 8707: ``resource=<resource server client_id>`` at the token endpoint adds it to
    ``aud``; that resource server may then introspect the token; unknown ones are refused."""
    import httpx

    from tests.flows import obtain_tokens
    from tests.relying_party import Browser, RelyingParty

    make_user("ada@example.com")
    app_client = make_client("Photos")
    api = make_client("Photos API", resource_server=True, redirect_uri="https://api.example/unused")
    rp = RelyingParty(live_server.url, app_client.client_id, app_client.client_secret,
                      app_client.redirect_uri)
    tokens = obtain_tokens(rp, Browser(live_server.url))
    as_api = (api.client_id, api.client_secret)
    assert rp.introspect(tokens["access_token"], auth=as_api).json() == {"active": False}
    refreshed = httpx.post(rp.metadata["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "resource": api.client_id}, auth=(app_client.client_id, app_client.client_secret))
    assert refreshed.status_code == 200, refreshed.text
    access = refreshed.json()["access_token"]
    assert api.client_id in rp.verify_access_token(access)[1]["aud"]
    assert rp.introspect(access, auth=as_api).json()["active"] is True
    unknown = httpx.post(rp.metadata["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"],
        "resource": "https://nowhere.example"},
        auth=(app_client.client_id, app_client.client_secret))
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_target"


@pytest.mark.parametrize("scope, username", [
    ("openid", None), ("openid email", ADA), ("openid profile", ADA)])
def test_introspection_says_no_more_about_the_user_than_the_scope_allows(
        live_server, make_user, make_client, scope, username):
    """``sub`` identifies the user; the address (``username``) is released to the client and
    to a resource server it names only as far as the token's scope releases it, as userinfo
    does: an ``openid``-only token tells a resource server nothing personal."""
    import httpx

    from tests.flows import obtain_tokens
    from tests.relying_party import Browser, RelyingParty

    make_user(ADA)
    app_client = make_client("Photos")
    api = make_client("Photos API", resource_server=True, redirect_uri="https://api.example/unused")
    rp = RelyingParty(live_server.url, app_client.client_id, app_client.client_secret,
                      app_client.redirect_uri)
    tokens = obtain_tokens(rp, Browser(live_server.url), scope=scope)
    refreshed = httpx.post(rp.metadata["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "resource": api.client_id}, auth=(app_client.client_id, app_client.client_secret))
    assert refreshed.status_code == 200, refreshed.text
    sub = rp.verify_id_token(tokens["id_token"], None)["sub"]
    for token, caller in ((tokens["access_token"], None),
                          (refreshed.json()["access_token"], (api.client_id, api.client_secret)),
                          (refreshed.json()["refresh_token"], None)):
        body = rp.introspect(token, **({"auth": caller} if caller else {})).json()
        assert body["active"] is True and body["sub"] == sub and body["scope"] == scope
        assert body.get("username") == username
        assert ADA not in str(body) or username == ADA
    assert ("email" in rp.userinfo(tokens["access_token"]).json()) == (scope == "openid email")
