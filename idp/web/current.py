"""The browser's login session: the cookie, and the session it names, checked once per request."""

from __future__ import annotations

from flask import g, request

from .. import sessions
from ..models import EndReason, LoginSession, db
from ..runtime import client_ip, config, now
from ..sessions import policy_of

EXPIRY_MESSAGES = {
    EndReason.EXPIRED_IDLE: "You were signed out after a period of inactivity. Sign in again.",
    EndReason.EXPIRED_DURATION: "Your session reached its maximum duration. Sign in again.",
    EndReason.POLICY_CHANGED: "Your organisation changed its session policy, which ended this "
                              "session. Sign in again.",
}


def cookie_name() -> str:
    return "idp_session" if config()["INSECURE_COOKIES"] else "__Host-idp_session"


def set_cookie(response, value: str, session: LoginSession) -> None:
    response.set_cookie(
        cookie_name(),
        value,
        expires=policy_of(session).absolute_deadline(session),
        path="/",
        secure=not config()["INSECURE_COOKIES"],
        httponly=True,
        samesite="Lax",
    )


def clear_cookie(response) -> None:
    response.delete_cookie(
        cookie_name(), path="/", secure=not config()["INSECURE_COOKIES"], httponly=True,
        samesite="Lax",
    )


def login_session() -> LoginSession | None:
    """The active session this browser's cookie names, checked with the session rule
    (``sessions.check``) and touched (throttled). One found over is ended, and
    ``g.expired_reason`` says why, for the message on the login page. What this writes is
    committed at once: the view's own work (a sign-in's argon2, a lock on the user's row)
    then never runs while this session's row is held."""
    if "idp_session" in g:
        return g.idp_session
    session = sessions.find(request.cookies.get(cookie_name()))
    g.expired_reason = None
    if session is not None:
        ended = session.ended_at is not None
        reason = sessions.check(session, now())
        if reason is not None:
            g.expired_reason = reason
            wrote, session = not ended, None
        else:
            wrote = sessions.touch(session, now(), client_ip(),
                                   config()["ACTIVITY_WRITE_INTERVAL"])
        if wrote:
            db.session.commit()
    g.idp_session = session
    return session


def had_cookie() -> bool:
    return cookie_name() in request.cookies
