"""The limits that belong to client authentication at the back-channel endpoints.

A failed client authentication counts against the client id it claimed and against the
caller's IP; past either limit the answer is 429 instead of 401. Nothing is counted for an
authenticated request, so nobody can spend another client's budget by claiming its
(public) id; an operator may cap authenticated traffic per client (none by default).
"""

from __future__ import annotations

import base64
import json

from authlib.oauth2.rfc6749.util import extract_basic_authorization

from ..counters import Limited
from ..runtime import client_ip, services

#: The operator's optional per-client caps, by endpoint (empty settings: no cap).
CLIENT_CAPS = {"token": "TOKEN_RATE_LIMIT", "introspection": "INTROSPECTION_RATE_LIMIT"}


def claimed_client_id(headers, form) -> str:
    """The client a request claims to come from, before it is authenticated: HTTP Basic,
    the form's ``client_id``, or a client assertion's ``sub`` (unverified)."""
    basic_id, _ = extract_basic_authorization(headers)
    claimed = basic_id or form.get("client_id")
    if not claimed and form.get("client_assertion"):
        claimed = unverified_sub(form["client_assertion"])
    return str(claimed or "-")[:64]


def unverified_sub(assertion: str) -> str | None:
    """The ``sub`` a JWT says, its signature unchecked (only to count a failure by it)."""
    parts = assertion.split(".")
    if len(parts) != 3 or len(assertion) > 16384:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def client_authentication_failed(claimed: str) -> None:
    """Count a failed client authentication; past a limit, answer 429 (raises)."""
    limits = services().limits
    waits = [(wait, name) for name, key in (("CLIENT_AUTH_FAILURES_PER_IP", client_ip()),
                                            ("CLIENT_AUTH_FAILURES_PER_CLIENT", claimed))
             if (wait := limits.failed(name, key)) is not None]
    if waits:
        raise Limited(*max(waits))


def authenticated(client_id: str, endpoint: str) -> None:
    """An authenticated request: only the operator's cap for this endpoint, if set."""
    cap = CLIENT_CAPS.get(endpoint)
    if cap:
        services().limits.hit(cap, client_id)
