"""Reading and forging compact JWS in tests with cryptography alone.

Independent of the JOSE library under test, and able to write what no library would
sign for us: "alg: none", HMAC keyed with a public key, headers that bring their own
key, PS256 under an RS256 kid, an ES256 signature rewritten to its high-``s`` twin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, RSAKey

#: The order of the P-256 group.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes | dict | list) -> str:
    if isinstance(data, dict | list):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def header_of(token: str) -> dict:
    """The header, unverified."""
    return json.loads(unb64(token.split(".")[0]))


def claims_of(token: str) -> dict:
    """The claims, unverified."""
    return json.loads(unb64(token.split(".")[1]))


def sign(claims: dict | bytes, key, algorithm: str, headers: dict | None = None) -> str:
    """A compact JWS with header {"typ": "JWT", "alg": algorithm, **headers}; ``key`` is a
    cryptography private key (RS256, PS256, ES256) or bytes (HS256)."""
    header = {"typ": "JWT", "alg": algorithm, **(headers or {})}
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = f"{b64(header)}.{b64(payload)}".encode()
    if algorithm == "RS256":
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif algorithm == "PS256":
        signature = key.sign(signing_input, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                             hashes.SHA256())
    elif algorithm == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif algorithm == "HS256":
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    else:
        raise ValueError(algorithm)
    return f"{signing_input.decode()}.{b64(signature)}"


def public_jwk(public_key) -> dict:
    """The public JWK of a cryptography RSA or EC public key."""
    kind = ECKey if isinstance(public_key, ec.EllipticCurvePublicKey) else RSAKey
    return kind.import_key(public_key).as_dict(private=False)


def s_of(token: str) -> int:
    """The ``s`` half of an ES256 token's signature."""
    return int.from_bytes(unb64(token.rsplit(".", 1)[1])[32:], "big")


def other_s(token: str) -> str:
    """The same ES256 token with its signature (r, s) rewritten to (r, n - s): as valid to
    plain ECDSA as the original, and a different string."""
    signing_input, signature = token.rsplit(".", 1)
    raw = unb64(signature)
    s = int.from_bytes(raw[32:], "big")
    return f"{signing_input}.{b64(raw[:32] + (P256_ORDER - s).to_bytes(32, 'big'))}"
