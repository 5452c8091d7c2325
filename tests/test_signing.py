"""Signing and verifying our own tokens: what is signed, what verifies, what is refused.

Time is a plain ``now`` moved by the tests; nothing here sleeps. RSA generation
is the slow part, so most tests copy one directory generated per session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from joserfc.jwt import decode as decode_jwt

from idp.keys import SUPPORTED_ALGORITHMS, KeyStore
from idp.signing import _HALF_ORDER, MAX_TOKEN_LENGTH, Signer
from tests.compact import header_of, other_s, public_jwk, s_of
from tests.compact import sign as forge

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
RETENTION = timedelta(hours=1)
ISSUER = "https://id.example.test"
CLIENT = "client-1"


def _claims(now: datetime = NOW, **overrides: object) -> dict:
    ts = int(now.timestamp())
    claims = {"iss": ISSUER, "aud": CLIENT, "sub": "user-1", "iat": ts, "exp": ts + 300}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template") / "keys"
    KeyStore(directory, RETENTION).ensure(NOW)
    return directory


@pytest.fixture
def keys_dir(template_dir: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    shutil.copytree(template_dir, directory)  # keeps the 0700/0600 modes
    return directory


@pytest.fixture
def store(keys_dir: Path) -> KeyStore:
    """A store of its own, for tests that change the keys."""
    return KeyStore(keys_dir, RETENTION, reload_interval=0)


@pytest.fixture
def signer(store: KeyStore) -> Signer:
    return Signer(store)


@pytest.fixture(scope="session")
def keys(template_dir: Path) -> KeyStore:
    """One store for the read-only tests: loading (validating) an RSA key costs ~50 ms."""
    return KeyStore(template_dir, RETENTION, reload_interval=0)


@pytest.fixture(scope="session")
def shared(keys: KeyStore) -> Signer:
    return Signer(keys)


def _key(store: KeyStore | Signer, alg: str = "RS256"):
    store = store.keys if isinstance(store, Signer) else store
    return store.current(alg, now=NOW)


# -- signing and publishing ----------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_signed_token_verifies_with_the_signer_and_with_any_jwt_library_from_the_jwks(
    shared: Signer, alg: str
) -> None:
    token = shared.sign(_claims(), alg=alg, typ="at+jwt", now=NOW)

    header = header_of(token)
    assert header == {"alg": alg, "kid": _key(shared, alg).kid, "typ": "at+jwt"}
    claims = shared.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW, typ="at+jwt")
    assert claims == _claims()

    # A relying party's view: joserfc's stock algorithms (no low-s rule), keys from the JWKS.
    independent = decode_jwt(token, KeySet.import_key_set(shared.keys.jwks(NOW)), algorithms=[alg])
    JWTClaimsRegistry(now=int(NOW.timestamp()), iss={"essential": True, "value": ISSUER},
                      aud={"essential": True, "value": CLIENT}).validate(independent.claims)
    assert independent.header == header
    assert independent.claims == claims


# -- what verify refuses -------------------------------------------------------------


def test_verify_rejects_alg_none(shared: Signer) -> None:
    header = {"alg": "none", "kid": _key(shared).kid, "typ": "JWT"}
    token = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}."

    with pytest.raises(JoseError):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_hs256_keyed_with_our_rsa_public_key(shared: Signer) -> None:
    key = _key(shared, "RS256")
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = _b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())

    with pytest.raises(UnsupportedAlgorithmError):
        shared.verify(f"{header}.{payload}.{signature}", audience=CLIENT, now=NOW)


def test_verify_rejects_an_algorithm_that_does_not_match_the_key(shared: Signer) -> None:
    es = _key(shared, "ES256")
    rs_kid = _key(shared, "RS256").kid
    token = forge(_claims(), es.private_key, "ES256", {"kid": rs_kid})

    with pytest.raises(UnsupportedAlgorithmError):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_an_unknown_kid(shared: Signer) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = forge(_claims(), attacker, "ES256", {"kid": "es-evil"})

    with pytest.raises(JoseError, match="unknown"):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_a_token_without_kid(shared: Signer) -> None:
    token = forge(_claims(), _key(shared, "ES256").private_key, "ES256")

    with pytest.raises(JoseError, match="kid"):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_rejects_a_key_embedded_in_the_header(shared: Signer) -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    headers = {
        "kid": _key(shared, "ES256").kid,
        "jwk": public_jwk(attacker.public_key()),
    }
    token = forge(_claims(), attacker, "ES256", headers)

    with pytest.raises(JoseError, match="jwk"):
        shared.verify(token, audience=CLIENT, now=NOW)


@pytest.mark.parametrize(
    "member, value",
    [("jku", "https://evil.test/jwks"), ("x5u", "https://evil.test/cert"), ("x5c", ["MIIB"])],
)
def test_verify_rejects_key_locations_in_the_header_even_when_signed_by_us(
    shared: Signer, member: str, value: object
) -> None:
    key = _key(shared, "ES256")
    headers = {"kid": key.kid, member: value}
    token = forge(_claims(), key.private_key, "ES256", headers)

    with pytest.raises(JoseError, match=member):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_checks_exp_against_the_given_now(shared: Signer) -> None:
    token = shared.sign(_claims(exp=int(NOW.timestamp()) + 60), alg="ES256", now=NOW)

    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=59))
    with pytest.raises(ExpiredTokenError):
        shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=60))
    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=60), leeway=5)
    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(days=1), verify_exp=False)


def test_verify_requires_exp_unless_told_not_to(shared: Signer) -> None:
    token = shared.sign(_claims(exp=None), alg="ES256", now=NOW)

    with pytest.raises(MissingClaimError):
        shared.verify(token, audience=CLIENT, now=NOW)
    assert shared.verify(token, audience=CLIENT, now=NOW, verify_exp=False)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_verify_rejects_a_token_not_yet_valid(shared: Signer, claim: str) -> None:
    token = shared.sign(_claims(**{claim: int(NOW.timestamp()) + 30}), alg="ES256", now=NOW)

    with pytest.raises(InvalidClaimError):
        shared.verify(token, audience=CLIENT, now=NOW)
    assert shared.verify(token, audience=CLIENT, now=NOW + timedelta(seconds=30))
    assert shared.verify(token, audience=CLIENT, now=NOW, leeway=30)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["soon", True, float("inf"), None, [1]])
def test_verify_rejects_a_time_claim_that_is_not_a_number(
    shared: Signer, claim: str, value: object
) -> None:
    claims = _claims()
    claims[claim] = value
    token = shared.sign(claims, alg="ES256", now=NOW)

    with pytest.raises(JoseError):
        shared.verify(token, audience=CLIENT, now=NOW)


def test_verify_checks_audience_and_issuer(shared: Signer) -> None:
    token = shared.sign(_claims(aud=[CLIENT, "other"]), alg="ES256", now=NOW)

    assert shared.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW)
    assert shared.verify(token, audience=["nope", "other"], now=NOW)
    assert shared.verify(token, now=NOW)  # audience=None: the caller does not check it
    with pytest.raises(InvalidClaimError, match="aud"):
        shared.verify(token, audience="client-2", now=NOW)
    with pytest.raises(InvalidClaimError, match="iss"):
        shared.verify(token, audience=CLIENT, issuer="https://evil.test", now=NOW)
    no_aud = shared.sign(_claims(aud=None, iss=None), alg="ES256", now=NOW)
    with pytest.raises(MissingClaimError):
        shared.verify(no_aud, audience=CLIENT, now=NOW)
    with pytest.raises(MissingClaimError):
        shared.verify(no_aud, issuer=ISSUER, now=NOW)


def test_verify_checks_typ_case_insensitively_with_optional_application_prefix(
    shared: Signer,
) -> None:
    access = shared.sign(_claims(), alg="ES256", typ="application/AT+JWT", now=NOW)
    logout = shared.sign(_claims(), alg="ES256", typ="logout+jwt", now=NOW)
    untyped = shared.sign(_claims(), alg="ES256", typ=None, now=NOW)

    assert shared.verify(access, audience=CLIENT, now=NOW, typ="at+jwt")
    assert shared.verify(logout, audience=CLIENT, now=NOW, typ="application/logout+JWT")
    assert shared.verify(untyped, audience=CLIENT, now=NOW)  # typ=None: not checked
    for token in (logout, untyped):
        with pytest.raises(JoseError, match="typ"):
            shared.verify(token, audience=CLIENT, now=NOW, typ="at+jwt")


def test_verify_rejects_a_tampered_payload(shared: Signer) -> None:
    header, _, signature = shared.sign(_claims(), alg="ES256", now=NOW).split(".")
    forged = _b64(json.dumps(_claims(sub="admin")).encode())

    with pytest.raises(BadSignatureError):
        shared.verify(f"{header}.{forged}.{signature}", audience=CLIENT, now=NOW)


def _deeply_nested_header() -> str:
    header = _b64(b"[" * 5000 + b"]" * 5000)
    return f"{header}.{_b64(b'{}')}.{_b64(b'sig')}"


@pytest.mark.parametrize(
    "token",
    [
        "A" * 1024 * 1024,
        "x" * (MAX_TOKEN_LENGTH + 1),
        "",
        "a.b.c",
        "...",
        "a.b",
        "a.b.c.d.e",
        "é.é.é",
        "\x00.\x00.\x00",
        f"{_b64(b'{}')}.{_b64(b'{}')}.",
        f"{_b64(b'[]')}.{_b64(b'{}')}.",
        f"{_b64(b'not json')}.{_b64(b'{}')}.",
        _deeply_nested_header(),
        None,
        b"a.b.c",
        12,
    ],
    ids=lambda t: repr(t)[:20],
)
def test_verify_raises_only_invalid_token_error_on_garbage(shared: Signer, token: object) -> None:
    with pytest.raises(JoseError):
        shared.verify(token, now=NOW)  # type: ignore[arg-type]


def test_verify_rejects_a_payload_that_is_not_an_object(shared: Signer) -> None:
    key = _key(shared, "ES256")
    token = forge(b"[1, 2]", key.private_key, "ES256", {"kid": key.kid})

    with pytest.raises(JoseError):
        shared.verify(token, now=NOW, verify_exp=False)


def test_verify_requires_an_aware_now(shared: Signer) -> None:
    token = shared.sign(_claims(), now=NOW)

    with pytest.raises(ValueError, match="timezone"):
        shared.verify(token, now=datetime(2026, 1, 5, 9, 0))


# -- the verified-signature cache ----------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_a_cached_verification_still_checks_expiry_audience_and_the_key(
        signer: Signer, alg: str) -> None:
    store = signer
    token = store.sign(_claims(), alg=alg, now=NOW)
    assert store.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW)["sub"] == "user-1"
    # Second use: answered from the cache, with the same rules.
    assert store.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW)["sub"] == "user-1"
    with pytest.raises(ExpiredTokenError):
        store.verify(token, audience=CLIENT, issuer=ISSUER, now=NOW + timedelta(seconds=301))
    with pytest.raises(InvalidClaimError, match="aud"):
        store.verify(token, audience="someone-else", issuer=ISSUER, now=NOW)
    with pytest.raises(InvalidClaimError, match="iss"):
        store.verify(token, audience=CLIENT, issuer="https://evil.example", now=NOW)
    # Once its key is no longer published, a cached token is refused like any other.
    signer.keys.rotate(NOW)
    gone = NOW + signer.keys.publish_window + timedelta(seconds=1)
    with pytest.raises(JoseError, match="unknown or retired key"):
        store.verify(token, audience=CLIENT, issuer=ISSUER, now=gone, verify_exp=False)


def test_the_cache_is_bounded_and_returns_copies(keys_dir: Path) -> None:
    store = Signer(KeyStore(keys_dir, RETENTION, reload_interval=0), verified_cache_size=8)
    tokens = [store.sign(_claims(jti=str(i)), alg="ES256", now=NOW) for i in range(20)]
    for token in tokens:
        claims = store.verify(token, audience=CLIENT, now=NOW)
        claims["sub"] = "mallory"  # a caller changing its copy changes nothing cached
    assert len(store._verified) <= 8
    assert store.verify(tokens[-1], audience=CLIENT, now=NOW)["sub"] == "user-1"


@pytest.mark.parametrize("spelling", ["padded", "junk in signature", "whitespace"])
def test_only_the_canonical_spelling_of_a_token_verifies(shared: Signer, spelling: str) -> None:
    token = shared.sign(_claims(), alg="ES256", now=NOW)
    head, body, sig = token.split(".")
    variant = {"padded": f"{head}.{body}.{sig}==", "junk in signature": f"{head}.{body}.{sig}!",
               "whitespace": f"{head}.{body}. {sig}"}[spelling]
    with pytest.raises(DecodeError):
        shared.verify(variant, audience=CLIENT, now=NOW)


# -- one signature per token: ES256 with a low s only ----------------------------------


def test_our_es256_signatures_are_low_s_and_the_high_s_twin_is_refused(shared: Signer) -> None:
    """ECDSA's (r, s) and (r, n - s) both verify: the twin is a second valid spelling of
    every token, so a revoked or cached token could come back under another string."""
    for i in range(64):  # cryptography's s is high half the time: 64 low ones are no luck
        token = shared.sign(_claims(jti=str(i)), alg="ES256", now=NOW)
        assert s_of(token) <= _HALF_ORDER
        twin = other_s(token)
        assert s_of(twin) > _HALF_ORDER
        assert shared.verify(token, audience=CLIENT, now=NOW)["jti"] == str(i)
        with pytest.raises(BadSignatureError):
            shared.verify(twin, audience=CLIENT, now=NOW)
        # The twin is a real signature: plain ECDSA (joserfc's stock ES256) accepts it.
        key = shared.keys.published_key(header_of(twin)["kid"], NOW).public_jwk
        assert jws.deserialize_compact(twin, key, algorithms=["ES256"]).payload


def test_a_high_s_signature_is_refused_even_after_the_token_was_cached(shared: Signer) -> None:
    token = shared.sign(_claims(), alg="ES256", now=NOW)
    assert shared.verify(token, audience=CLIENT, now=NOW)
    assert shared.verify(token, audience=CLIENT, now=NOW)  # from the cache
    with pytest.raises(BadSignatureError):
        shared.verify(other_s(token), audience=CLIENT, now=NOW)


def test_a_forged_high_s_signature_by_our_key_is_refused(shared: Signer) -> None:
    """Whoever holds the key (an older build, another implementation) and signs high-s
    is refused too: the rule is on the token, not on who made it."""
    key = _key(shared, "ES256")
    for i in range(16):
        token = forge(_claims(jti=str(i)), key.private_key, "ES256", {"kid": key.kid})
        high = token if s_of(token) > _HALF_ORDER else other_s(token)
        low = other_s(high)
        assert shared.verify(low, audience=CLIENT, now=NOW)["jti"] == str(i)
        with pytest.raises(BadSignatureError):
            shared.verify(high, audience=CLIENT, now=NOW)

