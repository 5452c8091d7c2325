"""Scopes: which the provider knows, which a client may ask for, which a user may approve.

- A scope value the provider does not know is ignored (OIDC Core 3.1.2.1: values that are
  not understood SHOULD be ignored), so relying parties that send ``offline_access``,
  ``address`` or ``phone`` by default still sign users in.
- A known scope the client was not registered for is refused with ``invalid_scope``,
  naming what it may ask for: dropping it silently (``openid`` above all) would turn a
  sign-in into a plain OAuth grant and leave the relying party with a confusing error.
- ``admin`` is approved only by an account's administrators. It is narrowed where the
  grant is written (the code, the device approval), because Authlib works the request's
  scope out again after the view has looked at it.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749.errors import InvalidScopeError

from ..models import Role

SUPPORTED = ("openid", "profile", "email", "sessions", "admin")
ADMIN = "admin"

#: What the consent and device pages tell the user each scope lets the app do.
TEXT = {
    "openid": "Sign you in and know who you are",
    "profile": "See your name",
    "email": "See your email address",
    "sessions": "See and end your login sessions",
    "admin": "Manage your organisation's session policy and users' sessions (administrators)",
}


def requested(scope: str | None, client) -> str | None:
    """The scope a request asks for, with unknown values left out; ``invalid_scope``
    when it names a known scope this client may not have. None when none was sent (the
    client's registered scope then applies)."""
    if scope is None:
        return None
    known = [value for value in dict.fromkeys(scope.split()) if value in SUPPORTED]
    allowed = client.scope.split()
    refused = [value for value in known if value not in allowed]
    if refused:
        raise InvalidScopeError(
            f"This client may not ask for {' '.join(refused)}; "
            f"it may ask for: {' '.join(allowed) or 'nothing'}.")
    return " ".join(known)


def approvable(scope: str, user) -> str:
    """The part of ``scope`` this user may approve: ``admin`` only for an owner or admin."""
    administrator = user.role in (Role.OWNER, Role.ADMIN)
    return " ".join(value for value in scope.split() if value != ADMIN or administrator)


def described(scope: str) -> list[tuple[str, str]]:
    """Each scope with what it lets the app do, as the user is shown it."""
    return [(value, TEXT.get(value, value)) for value in scope.split()]
