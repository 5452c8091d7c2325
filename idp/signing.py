"""Signing and verifying the provider's own JWTs, all with joserfc.

ID tokens, JWT access tokens (RFC 9068) and back-channel logout tokens are signed
here with the key ``KeyStore.current`` names for the moment, and the provider's own
tokens coming back (access tokens at introspection, userinfo and the API; ID token
hints) are verified here against the keys the JWKS publishes.

Verification pins everything (RFC 8725 §2-3): the header only *names* a key; the
algorithm and key material come from our own keys, so "none", HS256 keyed with our
public key and keys the token brings (jwk, jku, x5u, x5c) cannot work. Time claims
are judged against the ``now`` passed in, never the wall clock. Every refusal is a
``joserfc.errors.JoseError``.

One token, one spelling: base64url without padding only, and ES256 signatures with
a low ``s`` only (an ECDSA signature ``(r, s)`` verifies as ``(r, n - s)`` too, a
second valid byte string for every token that would slip past deny-lists and caches
keyed on the token). Our own ES256 signatures are made low-``s``.

The hot path (the same access token introspected on every call a resource server
gets) keeps what the signature check proved, per (token, issuer, audience, typ);
times and the key's publication are still checked on every use.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidHeaderValueError,
    InvalidKeyIdError,
    InvalidPayloadError,
    JoseError,
    MissingClaimError,
    MissingHeaderError,
    UnsupportedAlgorithmError,
    UnsupportedHeaderError,
)
from joserfc.jwa import ESAlgorithm, JWSRegistry
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry

from .keys import SUPPORTED_ALGORITHMS, KeyStore, KeyStoreError

MAX_TOKEN_LENGTH = 16 * 1024
"""Longer tokens are rejected before any decoding; ours are a few hundred bytes."""

#: The order of the P-256 group (SEC 2 §2.4.2; FIPS 186-4 D.1.2.3).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HALF_ORDER = P256_ORDER // 2  # n is odd: s <= n/2 exactly when s <= n // 2

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Header members that would let the token choose its own key, or demand
# extensions we do not implement (RFC 8725 3.10, RFC 7515 4.1.11).
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})


class LowSES256(ESAlgorithm):
    """joserfc's ES256, producing and accepting only signatures with ``s <= n/2``."""

    def __init__(self) -> None:
        super().__init__("ES256", "P-256", 256, recommended=True)

    def sign(self, msg: bytes, key: ECKey) -> bytes:
        signature = super().sign(msg, key)
        s = int.from_bytes(signature[32:], "big")
        if s > _HALF_ORDER:  # cryptography does not normalise: half its signatures are high
            signature = signature[:32] + (P256_ORDER - s).to_bytes(32, "big")
        return signature

    def verify(self, msg: bytes, sig: bytes, key: ECKey) -> bool:
        if len(sig) != 64 or int.from_bytes(sig[32:], "big") > _HALF_ORDER:
            return False
        return super().verify(msg, sig, key)


class _Registry(JWSRegistry):
    """Our algorithms only, in a table of their own (joserfc's is shared, class-wide)."""

    algorithms = {"RS256": JWSRegistry.algorithms["RS256"], "ES256": LowSES256()}
    recommended = list(SUPPORTED_ALGORITHMS)


#: One registry per algorithm: a key verifies with its own algorithm and nothing else.
REGISTRIES = {alg: _Registry(algorithms=[alg]) for alg in SUPPORTED_ALGORITHMS}


class _Claims(JWTClaimsRegistry):
    """joserfc's claim checks, with ``exp`` optional when the caller judges expiry itself
    (it must still be a number)."""

    def __init__(self, now: float, leeway: float, verify_exp: bool, **options: Any):
        super().__init__(now=now, leeway=leeway, **options)  # type: ignore[arg-type]
        self.verify_exp = verify_exp

    def validate_exp(self, value: object) -> None:
        if self.verify_exp:
            super().validate_exp(value)
        elif isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))):
            raise InvalidClaimError("exp", "Claim 'exp' must be a NumericDate value")


def _claims_registry(now: float, leeway: float, verify_exp: bool, issuer: str | None,
                     audience: tuple[str, ...] | None) -> _Claims:
    options: dict[str, Any] = {}
    if verify_exp:
        options["exp"] = {"essential": True}
    if issuer is not None:
        options["iss"] = {"essential": True, "value": issuer}
    if audience is not None:
        options["aud"] = {"essential": True, "values": list(audience)}
    return _Claims(now, leeway, verify_exp, **options)


class Signer:
    """Signs with the store's current key; verifies against the keys it publishes."""

    def __init__(self, keys: KeyStore, verified_cache_size: int = 4096):
        self.keys = keys
        # Signature checks already passed: (token, issuer, audience, typ) -> (kid, claims).
        self._verified: dict[tuple, tuple[str, dict[str, Any]]] = {}
        self._verified_size = verified_cache_size

    def sign(self, claims: dict[str, Any], *, now: datetime, alg: str = "RS256",
             typ: str | None = "JWT") -> str:
        """A compact JWS over ``claims`` with header {alg, kid, typ}, signed with the key
        that signs at ``now``; no disk access."""
        key = self.keys.current(alg, now=now)
        header: dict[str, Any] = {"alg": alg, "kid": key.kid}
        if typ is not None:
            header["typ"] = typ
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jws.serialize_compact(header, payload, key.jwk, registry=REGISTRIES[alg])

    def verify(
        self,
        token: str,
        *,
        audience: str | list[str] | None = None,
        issuer: str | None = None,
        now: datetime,
        leeway: int = 0,
        verify_exp: bool = True,
        typ: str | None = None,
    ) -> dict[str, Any]:
        """The claims of a token we signed, or a ``JoseError``.

        ``audience``: one of these must be named; ``typ``: compared as RFC 8725 §3.11
        says; ``verify_exp=False`` leaves expiry to the caller (an expired token of ours
        is still ours).
        """
        now = _utc(now)
        if not isinstance(token, str):
            raise DecodeError("token must be a string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise DecodeError("token is too long")
        wanted = None if audience is None else (audience,) if isinstance(audience, str) \
            else tuple(audience)
        now_ts, leeway = now.timestamp(), float(leeway)
        try:
            cache_key = (token, issuer, wanted, typ)
            hit = self._verified.get(cache_key)
            if hit is not None and self.keys.published_key(hit[0], now, look_again=False):
                claims = dict(hit[1])
                _check_times(claims, now_ts, leeway, verify_exp)
                return claims
            kid, claims = self._verify_signature(token, now=now, typ=typ)
            _claims_registry(now_ts, leeway, verify_exp, issuer, wanted).validate(claims)
            if self._verified_size:
                if len(self._verified) >= self._verified_size:
                    with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                        del self._verified[next(iter(self._verified))]  # oldest first
                self._verified[cache_key] = (kid, dict(claims))
            return claims
        except (JoseError, KeyStoreError):
            raise  # a broken keys directory is a server fault, not a bad token
        except Exception as exc:  # malformed input must never surface as a 500
            raise DecodeError("malformed token") from exc

    def _verify_signature(self, token: str, *, now: datetime,
                          typ: str | None) -> tuple[str, dict[str, Any]]:
        if not _COMPACT_JWS.fullmatch(token):  # unpadded base64url only: no malleable spellings
            raise DecodeError("malformed token")
        try:
            compact = jws.extract_compact(token.encode("ascii"))
            header = compact.headers()
        except (JoseError, ValueError, TypeError) as exc:
            raise DecodeError("malformed token") from exc
        forbidden = _FORBIDDEN_HEADERS.intersection(header)
        if forbidden:
            raise UnsupportedHeaderError(
                f"token header carries forbidden member(s): {', '.join(sorted(forbidden))}")
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGORITHMS:
            raise UnsupportedAlgorithmError("the token's algorithm is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise MissingHeaderError("kid")
        if typ is not None and not _same_typ(header.get("typ"), typ):
            raise InvalidHeaderValueError(f"the token's typ is not {typ}")

        key = self.keys.published_key(kid, now)
        if key is None:
            raise InvalidKeyIdError("the token was signed with an unknown or retired key")
        if key.alg != alg:
            raise UnsupportedAlgorithmError("the token's algorithm does not match its key")
        if not jws.validate_compact(compact, key.public_jwk, registry=REGISTRIES[alg]):
            raise BadSignatureError("signature verification failed")
        try:
            claims = json.loads(compact.payload)
        except ValueError as exc:
            raise InvalidPayloadError("the payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise InvalidPayloadError("the payload is not a JSON object")
        return kid, claims


def _check_times(claims: dict[str, Any], now: float, leeway: float, verify_exp: bool) -> None:
    """A cached token's time claims against this call's ``now``: they passed joserfc's
    checks once (numbers; issuer and audience, which the cache key pins), and only the
    clock has moved since. The same rules as ``JWTClaimsRegistry``'s, without its cost."""
    exp = claims.get("exp")
    if verify_exp:
        if exp is None:
            raise MissingClaimError("exp")
        if exp <= now - leeway:
            raise ExpiredTokenError("exp")
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + leeway:
        raise InvalidClaimError("nbf", "The token is not yet valid")
    iat = claims.get("iat")
    if iat is not None and iat > now + leeway:
        raise InvalidClaimError("iat", "The token was issued in the future")


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _same_typ(actual: object, expected: str) -> bool:
    """RFC 8725 3.11 / RFC 7515 4.1.9: case-insensitive, "application/" optional."""
    if not isinstance(actual, str):
        return False

    def norm(value: str) -> str:
        return value.lower().removeprefix("application/")

    return norm(actual) == norm(expected)
