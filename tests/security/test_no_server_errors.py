"""Every parser of user input refuses what it cannot represent: arbitrary text in any
parameter of the authorization, token, introspection, revocation, device, userinfo and
end-session endpoints, in the sessions API's cursor, and in any claim of a client
assertion, gets an answer in the protocol's own format and never a 500 (Hypothesis)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from urllib.parse import urlencode

import joserfc.jwt as jwt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc.jwk import RSAKey

from tests.security.conftest import ADA

PROPERTY = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)
NUMBERISH = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.sampled_from(["²", "٣", "0", "-1", "1e9", "10" * 400, "0x10", " 5", "+5", "5.0"]))
VALUE = st.one_of(TEXT, NUMBERISH, st.sampled_from(["", "openid", "code", "none", "login"]))
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                    "prompt", "max_age", "acr_values", "claims", "id_token_hint", "login_hint",
                    "response_mode", "code_challenge", "code_challenge_method", "request",
                    "ui_locales")
TOKEN_PARAMS = ("grant_type", "code", "redirect_uri", "code_verifier", "refresh_token", "scope",
                "client_id", "client_secret", "client_assertion", "client_assertion_type",
                "device_code", "resource", "token", "token_type_hint")
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**40, max_value=10**40),
              st.floats(allow_nan=False), TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6)


def no_500(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:400]


@pytest.fixture
def photos(app, ada, party):
    return party("Photos", scope="openid profile email sessions")


@PROPERTY
@given(st.dictionaries(st.sampled_from(AUTHORIZE_PARAMS), VALUE, max_size=8),
       st.booleans())
@example({"max_age": "²"}, True)
@example({"max_age": "1" * 5000}, True)
@example({"claims": '{"id_token": {"acr": {"essential": true, "values": ["\u00e9"]}}}'}, True)
def test_the_authorization_endpoint_never_fails(app, photos, signed_in, params, with_client):
    browser = signed_in(ADA)
    if with_client:
        params = {"response_type": "code", "client_id": photos.client_id,
                  "redirect_uri": photos.redirect_uri, "scope": "openid", **params}
    no_500(browser.get("/authorize?" + urlencode(params)))


@PROPERTY
@given(st.sampled_from(["/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/device",
                        "/userinfo", "/oauth/end-session"]),
       st.lists(st.tuples(st.sampled_from(TOKEN_PARAMS + AUTHORIZE_PARAMS), VALUE), max_size=6),
       st.booleans(), st.booleans())
def test_the_back_channel_endpoints_never_fail(app, photos, path, pairs, authenticated,
                                               multipart):
    auth = (photos.client_id, photos.secret) if authenticated else None
    if multipart:
        data = {}
        for key, value in pairs:
            data.setdefault(key, []).append(value)
        response = photos.http.post(path, data=data, auth=auth,
                                    content_type="multipart/form-data")
    else:
        response = photos.http.post(path, data=urlencode(pairs), auth=auth,
                                    content_type="application/x-www-form-urlencoded")
    no_500(response)


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@PROPERTY
@given(st.one_of(TEXT,
                 st.builds(lambda when, sid: cursor_of(f"{when}|{sid}"),
                           st.one_of(TEXT, st.sampled_from([
                               "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                               "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00"])),
                           st.one_of(TEXT, st.just("abc")))))
@example(cursor_of("0001-01-01T00:00:00+01:00|abc"))
def test_the_sessions_api_cursor_never_fails(app, photos, signed_in, cursor):
    token = photos.tokens(signed_in(ADA), scope="openid sessions")["access_token"]
    no_500(photos.http.get("/api/v1/sessions?" + urlencode({"cursor": cursor}),
                           headers={"Authorization": f"Bearer {token}"}))


@pytest.fixture
def keyed(app, party):
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    machine = party("batch", client_credentials=True, redirect_uri="https://batch.example/cb",
                    jwks={"keys": [key.as_dict(private=False)]})
    return machine, key


@PROPERTY
@given(st.dictionaries(st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]),
                       JSON_VALUE, max_size=7),
       st.one_of(st.none(), JSON_VALUE),
       st.sampled_from(["/oauth/token", "/oauth/introspect", "/oauth/revoke"]))
@example({"exp": 10**30}, None, "/oauth/token")
@example({"exp": 1e300}, None, "/oauth/introspect")
@example({"exp": 99999999999, "iat": 99999999800}, None, "/oauth/token")
@example({"exp": int(time.time()) + 60, "iat": None}, None, "/oauth/revoke")
def test_any_claims_in_a_client_assertion_never_fail(app, keyed, claims, payload, path):
    machine, key = keyed
    now = int(time.time())
    base = {"iss": machine.client_id, "sub": machine.client_id, "aud": app.config["ISSUER"],
            "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    if payload is None or isinstance(payload, dict):
        assertion = jwt.encode({"alg": "RS256", "kid": "k1"}, {**base, **claims}, key)
    else:  # a signed payload that is not a claims object at all
        from joserfc import jws
        assertion = jws.serialize_compact({"alg": "RS256", "kid": "k1"},
                                          json.dumps(payload).encode(), key)
    response = machine.http.post(path, data={
        "grant_type": "client_credentials", "token": "x", "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    no_500(response)
    assert response.status_code in (200, 400, 401, 429), response.get_data(as_text=True)[:300]
