"""A WebAuthn authenticator and client in software, written from the WebAuthn Level 3
specification (§6.1 authenticator data, §6.5 attested credential data, §8.7 "none"
attestation, §5.8.1 client data) independently of the provider's library, so tests can
run the ceremonies without a browser, and play the attacker: another origin, a cloned
authenticator, no user verification, a replayed answer.

Browsers' own behaviour is tested with Chromium's virtual authenticator (tests/e2e).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Credential:
    id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0


class SoftAuthenticator:
    """A passkey authenticator (P-256, ES256) with its browser: ``create`` and ``get``
    take the options the provider sent (JSON) and return the answer as the browser
    would post it."""

    def __init__(self, origin: str = "http://localhost:5000", *, verifies_user: bool = True,
                 synced: bool = False, counts: bool = True):
        self.origin = origin
        self.verifies_user = verifies_user
        self.synced = synced
        self.counts = counts
        self.credentials: dict[bytes, Credential] = {}

    def _flags(self, extra: int = 0) -> int:
        flags = UP | extra
        if self.verifies_user:
            flags |= UV
        if self.synced:
            flags |= BE | BS
        return flags

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge,
                           "origin": origin or self.origin, "crossOrigin": False}).encode()

    def create(self, options: dict | str, *, origin: str | None = None) -> str:
        options = json.loads(options) if isinstance(options, str) else options
        rp_id = options["rp"]["id"]
        credential = Credential(secrets.token_bytes(32), ec.generate_private_key(ec.SECP256R1()),
                                rp_id, unb64url(options["user"]["id"]))
        self.credentials[credential.id] = credential
        numbers = credential.key.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})
        attested = bytes(16) + struct.pack(">H", len(credential.id)) + credential.id + cose
        auth_data = (hashlib.sha256(rp_id.encode()).digest() + bytes([self._flags(AT)])
                     + struct.pack(">I", 0) + attested)
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return json.dumps({
            "id": b64url(credential.id), "rawId": b64url(credential.id), "type": "public-key",
            "response": {"clientDataJSON": b64url(client_data),
                         "attestationObject": b64url(attestation), "transports": ["internal"]},
            "clientExtensionResults": {}, "authenticatorAttachment": "platform"})

    def get(self, options: dict | str, *, origin: str | None = None, rp_id: str | None = None,
            credential: Credential | None = None, sign_count: int | None = None) -> str:
        """Answer with ``credential`` (default: the first this authenticator holds that
        the options allow)."""
        options = json.loads(options) if isinstance(options, str) else options
        allowed = {unb64url(c["id"]) for c in options.get("allowCredentials") or ()}
        if credential is None:
            credential = next(c for c in self.credentials.values()
                              if not allowed or c.id in allowed)
        if self.counts:
            credential.sign_count += 1
        count = credential.sign_count if sign_count is None else sign_count
        auth_data = (hashlib.sha256((rp_id or credential.rp_id).encode()).digest()
                     + bytes([self._flags()]) + struct.pack(">I", count))
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signature = credential.key.sign(auth_data + hashlib.sha256(client_data).digest(),
                                        ec.ECDSA(hashes.SHA256()))
        return json.dumps({
            "id": b64url(credential.id), "rawId": b64url(credential.id), "type": "public-key",
            "response": {"clientDataJSON": b64url(client_data),
                         "authenticatorData": b64url(auth_data),
                         "signature": b64url(signature),
                         "userHandle": b64url(credential.user_handle)},
            "clientExtensionResults": {}, "authenticatorAttachment": "platform"})
