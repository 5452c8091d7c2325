"""Key rollover as relying parties see it, and one spelling per ES256 token.

`idp rotate-keys` publishes the new keys at once and signs with them only once every
JWKS cached before the rotation has expired (the endpoint's max-age, plus the time the
other nodes take to notice), so a relying party that keeps the JWKS for its max-age
verifies every token throughout. Time moves on the test clock; nothing sleeps.

An ECDSA signature (r, s) verifies as (r, n - s) too: a second string for the same
token, which would get past deny-lists and caches keyed on the token. The provider
signs with a low s and refuses a high one.
"""

from __future__ import annotations

import re
import shutil
from datetime import timedelta

import pytest
from joserfc.jwk import KeySet
from joserfc.jwt import decode as decode_jwt

from tests.compact import P256_ORDER, header_of, other_s, s_of
from tests.security.conftest import ADA


@pytest.fixture
def settings(settings, tmp_path):
    """A private copy of the shared signing keys: these tests rotate them."""
    keys = tmp_path / "keys"
    shutil.copytree(settings["KEYS_DIR"], keys)
    return {**settings, "KEYS_DIR": keys}


class CachedJwks:
    """A relying party's JWKS: fetched when it has none or its copy is past the response's
    max-age (by the provider's clock, the test's), verified with joserfc's stock algorithms."""

    def __init__(self, http, clock):
        self.http, self.clock = http, clock
        self.keys: KeySet | None = None
        self.until = None
        self.fetches = 0

    def current(self) -> KeySet:
        now = self.clock.now()
        if self.keys is None or now >= self.until:
            response = self.http.get("/.well-known/jwks.json")
            max_age = int(re.search(r"max-age=(\d+)", response.headers["Cache-Control"]).group(1))
            self.keys = KeySet.import_key_set(response.get_json())
            self.until = now + timedelta(seconds=max_age)
            self.fetches += 1
        return self.keys

    def verify(self, token: str) -> dict:
        return decode_jwt(token, self.current(), algorithms=["RS256", "ES256"]).claims


def test_a_rotated_key_is_published_a_cache_period_before_it_signs(app, clock, ada, party,
                                                                   signed_in):
    photos = party("Photos")
    browser = signed_in(ADA)
    services = app.extensions["idp"]
    access_alg = app.config["ACCESS_TOKEN_ALG"]
    max_age = app.config["JWKS_MAX_AGE"]
    rp = CachedJwks(photos.http, clock)
    before = photos.tokens(browser)
    rp.verify(before["id_token"])  # the relying party caches the JWKS before the rotation
    old = {"access_token": header_of(before["access_token"])["kid"],
           "id_token": header_of(before["id_token"])["kid"]}

    rotated_at = clock.now()
    new = {k.alg: k.kid for k in services.keys.rotate(rotated_at)}
    new = {"access_token": new[access_alg], "id_token": new["RS256"]}
    takeover = rotated_at + max_age + timedelta(seconds=app.config["KEYS_RELOAD_INTERVAL"])

    jwks = photos.http.get("/.well-known/jwks.json")
    assert jwks.headers["Cache-Control"] == f"public, max-age={int(max_age.total_seconds())}"
    published = {k["kid"] for k in jwks.get_json()["keys"]}
    assert set(old.values()) | set(new.values()) <= published  # both, right after the rotation

    issued = [before]
    while clock.now() <= takeover + timedelta(minutes=1):
        tokens = photos.tokens(browser)
        signer = new if clock.now() >= takeover else old
        for name in ("access_token", "id_token"):
            assert header_of(tokens[name])["kid"] == signer[name], (clock.now() - rotated_at, name)
        assert photos.userinfo(tokens["access_token"]).status_code == 200
        assert photos.active(tokens["access_token"])
        issued.append(tokens)
        for earlier in issued:  # with whatever JWKS the relying party holds now
            assert rp.verify(earlier["id_token"])["aud"] == photos.client_id
            assert rp.verify(earlier["access_token"])["client_id"] == photos.client_id
        clock.advance(seconds=30)
    assert {header_of(t["access_token"])["kid"] for t in issued} == {old["access_token"],
                                                                     new["access_token"]}
    assert rp.fetches == 2  # at the start and when its copy expired: never for a new kid


def test_an_access_token_with_the_other_s_is_refused_at_introspection_and_userinfo(
        app, ada, party, signed_in):
    assert app.config["ACCESS_TOKEN_ALG"] == "ES256"
    photos = party("Photos")
    tokens = photos.tokens(signed_in(ADA))
    token = tokens["access_token"]
    twin = other_s(token)
    assert header_of(token)["alg"] == "ES256"
    assert s_of(token) <= P256_ORDER // 2 < s_of(twin) and twin != token

    for round_ in ("before the original was seen", "after it was accepted (and cached)"):
        introspected = photos.introspect(twin)
        assert introspected.status_code == 200, round_
        assert introspected.get_json() == {"active": False}, round_
        userinfo = photos.userinfo(twin)
        assert userinfo.status_code == 401, round_
        assert "invalid_token" in userinfo.headers["WWW-Authenticate"], round_
        api = photos.http.get("/api/v1/sessions", headers={"Authorization": f"Bearer {twin}"})
        assert api.status_code == 401, round_

        assert photos.introspect(token).get_json()["active"] is True
        assert photos.userinfo(token).status_code == 200
