"""JWT algorithm and key pinning (RFC 8725 §2.1-2.3, §3.1-3.2, §3.10-3.11; RFC 9068 §4;
OIDC Core §16.x; RFC 7523 §3): ID token hints, client assertions and access tokens
that say "alg: none", that are HMAC-signed with our (public) RSA key, that bring their
own key (jwk, jku, x5u, x5c), name an unknown kid, mismatch alg and key, carry a
crit header, or were tampered with, are refused: an error page and no code, 401
invalid_client, 401 invalid_token, or {"active": false}."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import RSAKey

from tests.compact import claims_of, header_of, public_jwk
from tests.compact import sign as forge
from tests.security.conftest import ADA, query_of, session_state, text_of

ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
ATTACKER_JWK = public_jwk(ATTACKER_RSA.public_key())


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64(header)}.{b64(claims)}."


def hmac_signed(header: dict, claims: dict, secret: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def pem_of(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def forgeries(real: str, public_pem: bytes, *, typ: str | None) -> dict[str, str]:
    """Every way to make a token that names the same claims without our private key."""
    header = header_of(real)
    claims = claims_of(real)
    kid = header["kid"]
    base = {"typ": typ} if typ else {}
    out = {
        "alg none": unsigned({**base, "alg": "none", "kid": kid}, claims),
        "alg None": unsigned({**base, "alg": "None", "kid": kid}, claims),
        "alg NONE, no kid": unsigned({**base, "alg": "NONE"}, claims),
        "alg none with a signature": unsigned({**base, "alg": "none", "kid": kid}, claims)
        + real.rsplit(".", 1)[1],
        "HS256 keyed with our RSA public PEM": hmac_signed({**base, "alg": "HS256", "kid": kid},
                                                          claims, public_pem),
        "HS256 keyed with the PEM, no newline": hmac_signed(
            {**base, "alg": "HS256", "kid": kid}, claims, public_pem.strip()),
        "HS512 keyed with our RSA public PEM": unsigned({**base, "alg": "HS512", "kid": kid},
                                                        claims) + b64(b"x" * 64),
        "attacker key, our kid": forge(claims, ATTACKER_RSA, "RS256", {**base, "kid": kid}),
        "attacker key in a jwk header": forge(claims, ATTACKER_RSA, "RS256", {
            **base, "kid": ATTACKER_JWK.get("kid", "attacker"), "jwk": ATTACKER_JWK}),
        "attacker key in a jwk header, our kid": forge(claims, ATTACKER_RSA, "RS256", {
            **base, "kid": kid, "jwk": ATTACKER_JWK}),
        "jku to the attacker": forge(claims, ATTACKER_RSA, "RS256", {
            **base, "kid": "attacker", "jku": "https://evil.example/jwks.json"}),
        "x5u to the attacker": forge(claims, ATTACKER_RSA, "RS256", {
            **base, "kid": "attacker", "x5u": "https://evil.example/cert.pem"}),
        "x5c chain of the attacker": forge(claims, ATTACKER_RSA, "RS256", {
            **base, "kid": kid, "x5c": [b64(pem_of(ATTACKER_RSA.public_key()))]}),
        "unknown kid": forge(claims, ATTACKER_RSA, "RS256",
                             {**base, "kid": "rs-20990101-deadbeef"}),
        "path traversal kid": forge(claims, ATTACKER_RSA, "RS256",
                                    {**base, "kid": "../../../../dev/null"}),
        "no kid": forge(claims, ATTACKER_RSA, "RS256", base),
        "ES256 under our RSA kid": forge(claims, ATTACKER_EC, "ES256", {**base, "kid": kid}),
        "PS256 under our RSA kid": forge(claims, ATTACKER_RSA, "PS256", {**base, "kid": kid}),
        "crit header": forge(claims, ATTACKER_RSA, "RS256", {**base, "kid": kid, "crit": ["exp"]}),
        "tampered payload": f"{real.split('.')[0]}.{b64({**claims, 'sub': 'someone-else'})}."
                            f"{real.split('.')[2]}",
        "signature stripped": real.rsplit(".", 1)[0] + ".",
        "header swapped to none": f"{b64({**header, 'alg': 'none'})}.{real.split('.', 1)[1]}",
        "JWE-shaped": f"{b64({'alg': 'dir', 'enc': 'A128GCM', 'kid': kid})}..{b64(b'iv')}."
                      f"{b64(b'ct')}.{b64(b'tag')}",
        "JSON serialisation": json.dumps({"payload": b64(claims), "signatures": []}),
    }
    return out


@pytest.fixture
def world(app, ada, party, signed_in):
    photos = party("Photos", post_logout_redirect_uris=["http://127.0.0.1:9999/bye"])
    browser = signed_in(ADA)
    tokens = photos.tokens(browser, scope="openid profile email")
    with app.app_context():
        services = app.extensions["idp"]
        key = services.keys.current("RS256", now=services.clock.now())
        public_pem = pem_of(key.private_key.public_key())
    return photos, browser, tokens, public_pem


def test_the_jwks_our_forgeries_start_from_is_the_public_one(world):
    """The attacker has exactly what the JWKS publishes: public members only."""
    photos, browser, tokens, public_pem = world
    jwks = photos.http.get("/.well-known/jwks.json").get_json()
    for key in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
    kid = header_of(tokens["id_token"])["kid"]
    published = next(k for k in jwks["keys"] if k["kid"] == kid)
    assert RSAKey.import_key(published).as_pem(private=False) == public_pem


def test_forged_id_token_hints_are_refused_at_authorize_and_no_code_is_issued(world):
    photos, browser, tokens, public_pem = world
    refused = {}
    for name, forged in forgeries(tokens["id_token"], public_pem, typ="JWT").items():
        for prompt in (None, "none"):
            response = browser.get(photos.authorize_url(id_token_hint=forged, prompt=prompt))
            location = response.headers.get("Location", "")
            params = query_of(location) if location.startswith(photos.redirect_uri) else {}
            if "code" in params or not (params.get("error") == "invalid_request"
                                        or response.status_code == 400):
                refused[f"{name} prompt={prompt}"] = (response.status_code, location[:120])
    assert not refused, refused
    good = browser.get(photos.authorize_url(id_token_hint=tokens["id_token"], prompt="none"))
    assert "code" in query_of(good.headers["Location"])


def test_forged_id_token_hints_are_refused_at_end_session_and_nobody_is_signed_out(app, world):
    photos, browser, tokens, public_pem = world
    for name, forged in forgeries(tokens["id_token"], public_pem, typ="JWT").items():
        for method in ("GET", "POST"):
            params = {"id_token_hint": forged, "post_logout_redirect_uri":
                      "http://127.0.0.1:9999/bye", "state": "s"}
            response = (browser.get("/oauth/end-session", query_string=params) if method == "GET"
                        else browser.post("/oauth/end-session", data=params))
            assert response.status_code == 400, (name, method, response.status_code)
            assert "Location" not in response.headers, name
            assert "not an ID token of this provider" in text_of(response), name
    assert session_state(app, browser.sid) == (None, None)


def test_forged_access_tokens_are_refused_by_userinfo_the_api_and_introspection(world):
    photos, browser, tokens, public_pem = world
    cases = forgeries(tokens["access_token"], public_pem, typ="at+jwt")
    cases["an ID token used as an access token"] = tokens["id_token"]
    for name, forged in cases.items():
        bearer = {"Authorization": f"Bearer {forged}"}
        userinfo = photos.http.get("/userinfo", headers=bearer)
        assert userinfo.status_code == 401, (name, userinfo.status_code)
        assert "invalid_token" in userinfo.headers.get("WWW-Authenticate", ""), name
        api = photos.http.get("/api/v1/sessions", headers=bearer)
        assert api.status_code == 401 and api.get_json()["error"] == "invalid_token", name
        introspected = photos.introspect(forged)
        assert introspected.status_code == 200 and introspected.get_json() == {"active": False}, name
        photos.revoke(forged)
    assert photos.active(tokens["access_token"])  # no forgery revoked the real token


def test_tokens_signed_by_us_for_another_issuer_or_type_are_refused(app, world):
    photos, browser, tokens, public_pem = world
    claims = claims_of(tokens["access_token"])
    with app.app_context():
        signer, now = app.extensions["idp"].signer, app.extensions["idp"].clock.now()
        other_issuer = signer.sign({**claims, "iss": "https://evil.example"}, typ="at+jwt", now=now)
        wrong_typ = signer.sign(claims, typ="JWT", now=now)
        logout_typ = signer.sign(claims, typ="logout+jwt", now=now)
    for name, token in (("another issuer", other_issuer), ("typ JWT", wrong_typ),
                        ("typ logout+jwt", logout_typ)):
        assert photos.userinfo(token).status_code == 401, name
        assert photos.introspect(token).get_json() == {"active": False}, name


def test_an_expired_access_token_is_refused_even_with_a_valid_signature(world, clock):
    photos, browser, tokens, public_pem = world
    clock.advance(minutes=11)
    assert photos.userinfo(tokens["access_token"]).status_code == 401
    assert photos.introspect(tokens["access_token"]).get_json() == {"active": False}


# -- private_key_jwt client assertions ---------------------------------------------------------

CLIENT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLIENT_JWK = {**public_jwk(CLIENT_KEY.public_key()), "kid": "client-1",
              "alg": "RS256", "use": "sig"}


@pytest.fixture
def batch(party):
    return party("Batch", jwks={"keys": [CLIENT_JWK]}, client_credentials=True)


def assertion_claims(client_id: str, **extra) -> dict:
    now = int(time.time())
    return {"iss": client_id, "sub": client_id, "aud": "http://127.0.0.1:5000",
            "iat": now, "exp": now + 60, "jti": str(uuid.uuid4()), **extra}


def present(batch, assertion: str, grant: str = "client_credentials"):
    return batch.http.post("/oauth/token", data={
        "grant_type": grant, "client_id": batch.client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})


def test_a_genuine_client_assertion_works_once(batch):
    assertion = forge(assertion_claims(batch.client_id), CLIENT_KEY, "RS256", {"kid": "client-1"})
    first = present(batch, assertion)
    assert first.status_code == 200, first.get_json()
    replay = present(batch, assertion)
    assert replay.status_code == 401 and replay.get_json()["error"] == "invalid_client"


def test_a_client_id_beside_an_assertion_must_name_its_subject(batch, party):
    """An assertion's client is its ``sub``: a ``client_id`` naming another client is
    refused (and the assertion is not spent by the refusal)."""
    other = party("Other batch", client_credentials=True)
    assertion = forge(assertion_claims(batch.client_id), CLIENT_KEY, "RS256", {"kid": "client-1"})
    refused = batch.http.post("/oauth/token", data={
        "grant_type": "client_credentials", "client_id": other.client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    assert refused.status_code == 401 and refused.get_json()["error"] == "invalid_client"
    assert present(batch, assertion).status_code == 200


def test_forged_client_assertions_are_refused_with_invalid_client(batch):
    genuine = forge(assertion_claims(batch.client_id), CLIENT_KEY, "RS256", {"kid": "client-1"})
    client_pem = pem_of(CLIENT_KEY.public_key())
    cases = forgeries(genuine, client_pem, typ=None)
    now = int(time.time())
    for name, claims in {
        "expired": assertion_claims(batch.client_id, iat=now - 600, exp=now - 300),
        "wrong audience": assertion_claims(batch.client_id, aud="https://evil.example/token"),
        "the token endpoint as audience": assertion_claims(
            batch.client_id, aud="http://127.0.0.1:5000/oauth/token"),
        "a 100-year assertion": assertion_claims(batch.client_id, exp=now + 100 * 365 * 86400),
        "exp out of any range": assertion_claims(batch.client_id, exp=10**13),
        "iss is not sub": assertion_claims(batch.client_id, iss="someone-else"),
        "sub is another client": assertion_claims(batch.client_id, sub="another-client"),
        "no jti": {k: v for k, v in assertion_claims(batch.client_id).items() if k != "jti"},
        "no exp": {k: v for k, v in assertion_claims(batch.client_id).items() if k != "exp"},
    }.items():
        cases[name] = forge(claims, CLIENT_KEY, "RS256", {"kid": "client-1"})
    wrong = {}
    for name, assertion in cases.items():
        # A fresh jti for forgeries of the genuine assertion, so replay is not what stops them.
        response = present(batch, assertion)
        if response.status_code != 401 or response.get_json().get("error") != "invalid_client":
            wrong[name] = (response.status_code, response.get_json())
    assert not wrong, wrong
