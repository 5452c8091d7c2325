"""Machine clients over real HTTP: the client_credentials grant (tokens with no user
and no session, never refreshable, never with user scopes) and private_key_jwt
client authentication (RFC 7523) at the token, introspection and revocation
endpoints, with one-time assertions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass

import httpx
import joserfc.jwt as jwt
import pytest
from joserfc.jwk import RSAKey

from idp import accounts
from idp.models import db

pytestmark = pytest.mark.e2e

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
INACTIVE = {"active": False}


@pytest.fixture(scope="module")
def signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "batch-1"}, private=True)


@pytest.fixture(scope="module")
def stranger_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "batch-1"}, private=True)


@dataclass
class Machine:
    client_id: str
    secret: str | None


@dataclass
class World:
    base: str
    http: httpx.Client
    live: object

    @property
    def token_url(self) -> str:
        return f"{self.base}/oauth/token"

    def register(self, name: str, **kwargs) -> Machine:
        with self.live.app.app_context():
            client, secret = accounts.create_client(name=name, redirect_uris=[],
                                                    now=self.live.clock.now(), **kwargs)
            db.session.commit()
            return Machine(client.client_id, secret)

    def token(self, machine: Machine | None = None, *, assertion: str | None = None,
              post: bool = False, **data) -> httpx.Response:
        form = {"grant_type": "client_credentials", **data}
        auth = None
        if assertion is not None:
            form.update(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)
        elif post:
            form.update(client_id=machine.client_id, client_secret=machine.secret)
        else:
            auth = (machine.client_id, machine.secret)
        return self.http.post(self.token_url, data=form, auth=auth)

    def introspect(self, token: str, machine: Machine | None = None, *,
                   assertion: str | None = None) -> httpx.Response:
        form = {"token": token}
        if assertion is not None:
            form.update(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)
            return self.http.post(f"{self.base}/oauth/introspect", data=form)
        return self.http.post(f"{self.base}/oauth/introspect", data=form,
                              auth=(machine.client_id, machine.secret))

    def revoke(self, token: str, *, assertion: str) -> httpx.Response:
        return self.http.post(f"{self.base}/oauth/revoke", data={
            "token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})


@pytest.fixture
def world(live_server):
    with httpx.Client(timeout=10, trust_env=False) as http:
        yield World(live_server.url, http, live_server)


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assertion_for(client_id: str, key: RSAKey, aud: str, **overrides) -> str:
    """An RFC 7523 client assertion: iss = sub = client_id, aud, short exp, fresh jti."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60,
              "jti": uuid.uuid4().hex, **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


def compact(header: dict, claims: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def unsigned(claims: dict) -> str:
    return compact({"alg": "none", "typ": "JWT"}, claims) + "."


def hs256(claims: dict, secret: bytes) -> str:
    signing_input = compact({"alg": "HS256", "typ": "JWT"}, claims)
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


# -- client_credentials ------------------------------------------------------------------------------


def test_client_credentials_tokens_have_no_user_no_session_and_no_refresh_token(world):
    batch = world.register("batch", client_credentials=True)
    response = world.token(batch)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert "refresh_token" not in body and "id_token" not in body
    assert body["token_type"].lower() == "bearer" and body["expires_in"] == 600
    claims = claims_of(body["access_token"])
    assert claims["sub"] == batch.client_id and claims["client_id"] == batch.client_id
    assert "sid" not in claims and "auth_time" not in claims

    seen = world.introspect(body["access_token"], batch).json()
    assert seen["active"] is True
    assert seen["sub"] == batch.client_id and seen["client_id"] == batch.client_id
    assert "sid" not in seen and "username" not in seen
    assert seen["token_type"] == "Bearer" and seen["jti"] == claims["jti"]
    assert seen["iss"] == world.base and seen["exp"] == claims["exp"]
    # No user: nothing to tell at userinfo.
    userinfo = world.http.get(f"{world.base}/userinfo",
                              headers={"Authorization": f"Bearer {body['access_token']}"})
    assert userinfo.status_code == 401
    # client_secret_post works as well; each grant is its own token.
    other = world.token(batch, post=True)
    assert other.status_code == 200 and other.json()["access_token"] != body["access_token"]


def test_client_credentials_tokens_expire_and_are_revocable(world):
    batch = world.register("batch", client_credentials=True)
    first = world.token(batch).json()["access_token"]
    second = world.token(batch).json()["access_token"]
    revoked = world.http.post(f"{world.base}/oauth/revoke", data={"token": first},
                              auth=(batch.client_id, batch.secret))
    assert revoked.status_code == 200
    assert world.introspect(first, batch).json() == INACTIVE
    assert world.introspect(second, batch).json()["active"] is True
    world.live.clock.advance(seconds=601)
    assert world.introspect(second, batch).json() == INACTIVE


def test_user_scopes_are_refused_to_machine_clients(world):
    batch = world.register("batch", client_credentials=True,
                           scope="openid profile email sessions admin")
    for scope in ("openid", "profile", "email", "sessions", "admin", "openid email"):
        response = world.token(batch, scope=scope)
        assert response.status_code == 400, (scope, response.text)
        assert response.json()["error"] == "invalid_scope" and "access_token" not in response.json()
    # A value the provider does not know is ignored (RFC 6749 §3.3 lets the server narrow).
    ignored = world.token(batch, scope="unknown-scope")
    assert ignored.status_code == 200 and not ignored.json().get("scope")
    # Without a scope the token carries none of the user scopes the client was registered with.
    granted = world.token(batch).json()
    assert not set(granted.get("scope", "").split()) & {"openid", "profile", "email", "sessions",
                                                        "admin"}
    assert not set(claims_of(granted["access_token"]).get("scope", "").split()) & {
        "openid", "profile", "email", "sessions", "admin"}


def test_client_credentials_needs_the_grant_and_real_credentials(world, make_client):
    web_app = make_client("Photos")  # registered without client_credentials
    refused = world.http.post(world.token_url, data={"grant_type": "client_credentials"},
                              auth=(web_app.client_id, web_app.client_secret))
    assert refused.status_code == 400 and refused.json()["error"] == "unauthorized_client"
    batch = world.register("batch", client_credentials=True)
    wrong = world.http.post(world.token_url, data={"grant_type": "client_credentials"},
                            auth=(batch.client_id, "not-the-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    anonymous = world.http.post(world.token_url, data={"grant_type": "client_credentials",
                                                       "client_id": batch.client_id})
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"
    cli = make_client("acme-cli", public=True, device=True)
    public = world.http.post(world.token_url, data={"grant_type": "client_credentials",
                                                    "client_id": cli.client_id})
    assert public.status_code in (400, 401)
    assert public.json()["error"] in ("invalid_client", "unauthorized_client")


# -- private_key_jwt ---------------------------------------------------------------------------------


def refused_client(response: httpx.Response) -> bool:
    """invalid_client; RFC 6749 §5.2 allows 400 when no Authorization header was used
    (the status itself is pinned by test_a_refused_assertion_answers_401)."""
    return response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


@pytest.fixture
def keyed(world, signing_key) -> Machine:
    jwks = {"keys": [signing_key.as_dict(private=False)]}
    return world.register("keyed batch", client_credentials=True, jwks=jwks)


def test_private_key_jwt_authenticates_at_token_introspection_and_revocation(
        world, keyed, signing_key):
    assert keyed.secret is None
    response = world.token(assertion=assertion_for(keyed.client_id, signing_key, world.base))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert claims_of(token)["sub"] == keyed.client_id
    seen = world.introspect(token, assertion=assertion_for(keyed.client_id, signing_key,
                                                           world.base))
    assert seen.status_code == 200 and seen.json()["active"] is True
    assert seen.json()["sub"] == keyed.client_id
    seen = world.introspect(token, assertion=assertion_for(keyed.client_id, signing_key,
                                                           world.base))
    assert seen.json()["active"] is True
    revoked = world.revoke(token, assertion=assertion_for(keyed.client_id, signing_key,
                                                          world.base))
    assert revoked.status_code == 200
    assert world.introspect(token, assertion=assertion_for(
        keyed.client_id, signing_key, world.base)).json() == INACTIVE
    # A client registered with keys has no secret to fall back on.
    by_secret = world.http.post(world.token_url, data={"grant_type": "client_credentials"},
                                auth=(keyed.client_id, "anything"))
    assert by_secret.status_code == 401


def test_an_assertion_is_accepted_once(world, keyed, signing_key):
    once = assertion_for(keyed.client_id, signing_key, world.base)
    first = world.token(assertion=once)
    assert first.status_code == 200
    replay = world.token(assertion=once)
    assert refused_client(replay)
    # Nor at another endpoint.
    elsewhere = world.introspect(first.json()["access_token"], assertion=once)
    assert refused_client(elsewhere)


def test_an_assertion_presented_in_a_refused_request_cannot_be_replayed(world, keyed, signing_key):
    """RFC 7523 §3 item 7: the jti is remembered once the assertion was accepted, even
    when the request it authenticated then failed (here: a user scope refused)."""
    once = assertion_for(keyed.client_id, signing_key, world.base)
    refused = world.token(assertion=once, scope="openid")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"
    replay = world.token(assertion=once)
    assert refused_client(replay), replay.text


def test_bad_assertions_are_refused(world, keyed, signing_key, stranger_key, make_client):
    other = world.register("other batch", client_credentials=True,
                           jwks={"keys": [stranger_key.as_dict(private=False)]})
    now = int(time.time())
    plain = {"iss": keyed.client_id, "sub": keyed.client_id, "aud": world.base,
             "exp": now + 60}
    public_n = signing_key.as_dict(private=False)["n"].encode()
    candidates = {
        "alg none": unsigned({**plain, "jti": uuid.uuid4().hex}),
        "HS256 keyed with the public key": hs256({**plain, "jti": uuid.uuid4().hex}, public_n),
        "HS256 keyed with the JWKS": hs256({**plain, "jti": uuid.uuid4().hex},
                                           json.dumps(signing_key.as_dict(private=False)).encode()),
        "wrong aud": assertion_for(keyed.client_id, signing_key, "https://elsewhere.example/token"),
        "userinfo as aud": assertion_for(keyed.client_id, signing_key, f"{world.base}/userinfo"),
        # An endpoint URL as audience: what audience-injection attacks replay (2025).
        "token endpoint as aud": assertion_for(keyed.client_id, signing_key, world.token_url),
        "lives 100 years": assertion_for(keyed.client_id, signing_key, world.base,
                                         exp=now + 100 * 365 * 86400),
        "lives 6 minutes": assertion_for(keyed.client_id, signing_key, world.base, iat=now,
                                         exp=now + 360),
        "exp far out of range": assertion_for(keyed.client_id, signing_key, world.base,
                                              exp=10**13),
        "exp not a number": assertion_for(keyed.client_id, signing_key, world.base, exp="soon"),
        "issued in the future": assertion_for(keyed.client_id, signing_key, world.base,
                                              iat=now + 120, exp=now + 180),
        "expired": assertion_for(keyed.client_id, signing_key, world.base, exp=now - 120),
        "no exp": assertion_for(keyed.client_id, signing_key, world.base, exp=None),
        "no jti": assertion_for(keyed.client_id, signing_key, world.base, jti=None),
        "iss differs from sub": assertion_for(keyed.client_id, signing_key, world.base,
                                              iss=other.client_id),
        "unregistered key": assertion_for(keyed.client_id, stranger_key, world.base),
        "another client's key": assertion_for(keyed.client_id, stranger_key, world.base,
                                              kid=None),
        "names another client": assertion_for(other.client_id, signing_key, world.base),
        "unknown client": assertion_for("no-such-client", signing_key, world.base),
        "not a JWT": "not-a-jwt",
    }
    for name, value in candidates.items():
        assert refused_client(world.token(assertion=value)), name
        assert refused_client(world.introspect("x", assertion=value)), name
    # A client with a secret cannot switch to assertions it never registered keys for.
    web_app = make_client("Photos", client_credentials=True)
    foreign = world.token(assertion=assertion_for(web_app.client_id, signing_key, world.base))
    assert refused_client(foreign)
    # After all that, a good assertion still works.
    assert world.token(assertion=assertion_for(keyed.client_id, signing_key,
                                               world.base)).status_code == 200


def test_a_refused_assertion_answers_401(world, keyed, signing_key):
    """Like every other failed client authentication here (a wrong secret, none at all):
    the README's "401 otherwise" at introspection, and 401 invalid_client for a replay."""
    once = assertion_for(keyed.client_id, signing_key, world.base)
    assert world.token(assertion=once).status_code == 200
    replay = world.token(assertion=once)
    at_introspection = world.introspect("x", assertion=once)
    forged = world.token(assertion=unsigned({"iss": keyed.client_id, "sub": keyed.client_id,
                                             "aud": world.base, "jti": uuid.uuid4().hex,
                                             "exp": int(time.time()) + 60}))
    for response in (replay, at_introspection, forged):
        assert response.json()["error"] == "invalid_client"
    assert [replay.status_code, at_introspection.status_code, forged.status_code] == [401, 401, 401]
