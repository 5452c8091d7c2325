"""The JSON API: the same facts and actions as the sessions page, for scripts.

Authenticated by a bearer access token issued through OIDC with scope
``sessions``; the session the token belongs to is ``current``. Errors are JSON
with a stable ``error`` code. The contract is ``idp/openapi.json``.
"""

from __future__ import annotations

import json
from functools import wraps
from pathlib import Path

from authlib.integrations.flask_oauth2 import current_token
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Response, g, jsonify, request

from .. import sessions
from ..models import EndReason, db
from ..oauth.endpoints import resource_protector
from ..runtime import client_ip, config, now

bp = Blueprint("api", __name__, url_prefix="/api/v1")
OPENAPI = Path(__file__).resolve().parents[1] / "openapi.json"
_protector = resource_protector()


def api_error(status: int, error: str, description: str, headers: dict | None = None):
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def requires(scope: str):
    """Bearer token with ``scope`` whose family and session are still active."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            try:
                token = _protector.acquire_token([scope])
            except OAuth2Error as error:
                realm = f'Bearer realm="{config()["ISSUER"]}"'
                if error.error == "missing_authorization":
                    return api_error(401, "invalid_token", "Send an access token: "
                                     "Authorization: Bearer <token>.", {"WWW-Authenticate": realm})
                if error.error == "insufficient_scope":
                    return api_error(403, "insufficient_scope",
                                     f"The access token lacks the '{scope}' scope.",
                                     {"WWW-Authenticate": f'{realm}, error="insufficient_scope", '
                                                          f'scope="{scope}"'})
                return api_error(401, "invalid_token", "The access token is expired, revoked "
                                 "or not valid.", {"WWW-Authenticate":
                                                   f'{realm}, error="invalid_token"'})
            principal = token.get_user()
            g.user = principal.user
            g.current_sid = principal.session.id
            response = view(*args, **kwargs)
            response.headers["Cache-Control"] = "no-store"
            return response

        return wrapper

    return decorator


def _time(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def session_json(view: sessions.SessionView, *, with_events: bool = False) -> dict:
    s = view.session
    body = {
        "id": s.id,
        "status": str(view.status),
        "current": s.id == g.current_sid,
        "kind": s.kind,
        "device": {"label": s.device_label, "type": s.device_type},
        "user_agent": s.user_agent,
        "location": s.location,
        "ip_first": s.ip_first,
        "ip_last": s.ip_last,
        "created_at": _time(s.created_at),
        "last_active_at": _time(s.last_active_at),
        "updated_at": _time(s.updated_at),
        "ended_at": _time(s.ended_at),
        "end_reason": str(view.reason) if view.reason else None,
        "end_reason_text": view.reason_text or None,
        "deadlines": {
            "absolute": _time(view.absolute_deadline),
            "idle": _time(view.idle_deadline),
        },
        "apps": [
            {
                "client_id": a.client_id,
                "name": a.name,
                "scopes": a.scopes,
                "first_issued_at": _time(a.first_issued),
                "last_issued_at": _time(a.last_issued),
                "active": a.active,
            }
            for a in view.apps
        ],
    }
    if with_events:
        body["events"] = [
            {"at": _time(e.at), "event": e.event, "ip": e.ip, "actor": e.actor,
             "detail": e.detail or {}}
            for e in view.events
        ]
    return body


@bp.get("/openapi.json")
def openapi():
    return Response(OPENAPI.read_bytes(), mimetype="application/json")


@bp.get("/sessions")
@requires("sessions")
def list_sessions():
    status = request.args.get("status", "all")
    if status not in ("all", "active"):
        return api_error(400, "invalid_request", "status must be 'all' or 'active'.")
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        return api_error(400, "invalid_request", "limit must be a whole number from 1 to 100.")
    try:
        page = sessions.history(
            g.user, now(), retention=config()["SESSION_RETENTION"],
            only_active=status == "active", cursor=request.args.get("cursor") or None,
            limit=limit, events_per_session=0,
        )
    except sessions.BadCursor:
        return api_error(400, "invalid_cursor", "The cursor is not one this API handed out.")
    db.session.commit()
    return jsonify({"sessions": [session_json(v) for v in page.views],
                    "next_cursor": page.next_cursor})


def _own(session_id: str):
    view = sessions.get_for_user(g.user, session_id, now())
    if view is None:
        return None, api_error(404, "not_found", "No session of yours has that id.")
    return view, None


@bp.get("/sessions/<session_id>")
@requires("sessions")
def get_session(session_id: str):
    view, error = _own(session_id)
    if error:
        return error
    db.session.commit()
    return jsonify(session_json(view, with_events=True))


@bp.delete("/sessions/<session_id>")
@requires("sessions")
def end_session(session_id: str):
    view, error = _own(session_id)
    if error:
        return error
    reason = EndReason.LOGOUT if view.session.id == g.current_sid else EndReason.ENDED_BY_USER
    ended = view.status is sessions.Status.ACTIVE and sessions.end(
        view.session, reason, now=now(), actor=f"user:{g.user.sub}", ip=client_ip()
    )
    db.session.commit()
    view = sessions.get_for_user(g.user, session_id, now())
    message = "Session ended." if ended else "The session had already ended; nothing changed."
    return jsonify({"ended": bool(ended), "message": message, "session": session_json(view)})


@bp.delete("/sessions")
@requires("sessions")
def end_sessions():
    scope = request.args.get("scope")
    if scope not in ("others", "all"):
        return api_error(400, "invalid_request", "scope must be 'others' or 'all'.")
    ended = sessions.end_all(
        g.user, EndReason.ENDED_ALL, now=now(), actor=f"user:{g.user.sub}", ip=client_ip(),
        keep=g.current_sid if scope == "others" else None,
    )
    db.session.commit()
    return jsonify({"ended": len(ended), "session_ids": [s.id for s in ended]})


def exempt_from_csrf(csrf) -> None:
    csrf.exempt(bp)


def load_openapi() -> dict:
    return json.loads(OPENAPI.read_text())
