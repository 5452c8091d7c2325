"""What a relying party may ask of the sign-in behind a request, and proving it again
within the same login session.

``acr_values=mfa`` (or ``claims`` asking for ``acr`` "mfa") asks for a second factor;
``max_age`` for an authentication at most that many seconds old. Neither starts a new
session: the user proves it again (``credentials.reauthenticate``) and the session keeps
its id and ``sid`` while its methods (``amr``) and ``authenticated_at`` (the ID token's
``auth_time``) change. When the user has no second factor, a voluntary request gets
``acr`` "pwd"; an essential one is refused (OIDC Core §5.5.1.1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from . import factors
from .models import ACR_MFA, ACR_PASSWORD, LoginSession

ACR_VALUES = (ACR_PASSWORD, ACR_MFA)


@dataclass(frozen=True)
class StepUp:
    """Prove again who you are in session ``session_id``, a second factor included when
    ``mfa``."""

    session_id: str
    mfa: bool


class Unmet(Exception):
    """An essential ``acr`` this user cannot reach."""


def needed(session: LoginSession, *, max_age: str | None, acr_values: str | None,
           claims: str | None, now: datetime) -> StepUp | None:
    """What the session must prove before this authorization request, or None.
    Raises ``ValueError`` for a malformed ``max_age`` or ``claims``, ``Unmet``."""
    fresh = False
    if max_age is not None:
        # ASCII digits only ("²".isdigit() is true), and few enough for any clock.
        if not (max_age.isascii() and max_age.isdigit() and len(max_age) <= 10):
            raise ValueError("'max_age' must be a number of seconds.")
        authenticated = session.authenticated_at or session.created_at
        elapsed = (now - authenticated).total_seconds()
        # 0 means "sign in again": once, as the resumed request no longer carries it.
        fresh = elapsed > int(max_age) or int(max_age) == 0
    wanted, essential = _wanted(acr_values, claims)
    has_mfa = ACR_MFA in (session.amr or ())
    has_factor = factors.has_second_factor(session.user)
    if ACR_MFA in wanted and not has_mfa:
        if has_factor:
            return StepUp(session.id, mfa=True)
        if essential and ACR_PASSWORD not in wanted:
            raise Unmet("This application requires a second factor; set one up at "
                        "/account/security and sign in again.")
    if essential and wanted and not wanted & set(ACR_VALUES):
        raise Unmet("None of the requested authentication classes is offered.")
    if fresh:
        return StepUp(session.id, mfa=has_mfa and has_factor)
    return None


def _wanted(acr_values: str | None, claims: str | None) -> tuple[set[str], bool]:
    """The acr values asked for, and whether they are essential (``claims`` only)."""
    wanted = set((acr_values or "").split())
    if not claims:
        return wanted, False
    try:
        parsed = json.loads(claims)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
        raise ValueError("'claims' must be a JSON object.") from None
    if not isinstance(parsed, dict):
        raise ValueError("'claims' must be a JSON object.")
    id_token = parsed.get("id_token")
    acr = id_token.get("acr") if isinstance(id_token, dict) else None
    if not isinstance(acr, dict):
        return wanted, False
    values = acr.get("values")
    if values is None and "value" in acr:
        values = [acr["value"]]
    wanted |= {v for v in values or () if isinstance(v, str)}
    return wanted, bool(acr.get("essential"))
