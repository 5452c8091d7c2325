"""The JSON API: the same facts and actions as the sessions page, for scripts.

Authenticated by a bearer access token issued through OIDC with scope
``sessions``; the session the token belongs to is ``current``. Errors are JSON
with a stable ``error`` code. The contract is ``idp/openapi.json``.
"""

from __future__ import annotations

import json
from functools import wraps
from pathlib import Path

import sqlalchemy as sa
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Response, g, jsonify, request

from .. import policy, policy_changes, roles, sessions
from ..models import EndReason, Role, User, db
from ..oauth.endpoints import resource_protector
from ..policy import PolicyBounds, PolicyError, SessionPolicy
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
            g.user = db.session.get(User, token.holder.user_id)
            g.current_sid = token.holder.session_id
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
        "amr": list(s.amr or []),
        "methods": view.methods_text,
        "authenticated_at": _time(s.authenticated_at or s.created_at),
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


# -- administrators: the account's policy, users and their sessions --------------------


def admin_only(view):
    """Owners and admins of the token's account; anyone else sees nothing (404)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if g.user.role not in (Role.OWNER, Role.ADMIN):
            return api_error(404, "not_found", "There is nothing here.")
        return view(*args, **kwargs)

    return wrapper


def policy_json(account) -> dict:
    current = SessionPolicy.of(account)
    bounds = PolicyBounds.from_config(config())
    return {
        "account": account.name,
        "max_duration": int(current.max_duration.total_seconds()),
        "idle_timeout": int(current.idle_timeout.total_seconds()),
        "max_concurrent": current.max_concurrent,
        "on_limit": str(current.on_limit),
        "require_mfa": current.require_mfa,
        "require_notices": current.require_notices,
        "updated_at": _time(account.policy_updated_at),
        "bounds": {
            "max_duration": [int(bounds.duration_min.total_seconds()),
                             int(bounds.duration_max.total_seconds())],
            "idle_timeout": [int(bounds.idle_min.total_seconds()),
                             int(bounds.idle_max.total_seconds())],
            "max_concurrent": [1, bounds.concurrent_max],
        },
    }


@bp.get("/account/session-policy")
@requires("admin")
@admin_only
def get_policy():
    return jsonify(policy_json(g.user.account))


@bp.put("/account/session-policy")
@requires("admin")
@admin_only
def put_policy():
    """Change the policy; ``?dry_run=true`` only reports what it would do."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # deeply nested JSON
        body = None
    if not isinstance(body, dict):
        return api_error(400, "invalid_request", "Send a JSON object.")
    account = g.user.account
    current = policy_json(account)
    values = {name: body.get(name, current[name]) for name in
              ("max_duration", "idle_timeout", "max_concurrent", "on_limit", "require_mfa",
               "require_notices")}
    end_password_only = body.get("end_password_only_sessions") is True
    if values["max_concurrent"] is None:
        values["max_concurrent"] = "unlimited"
    try:
        new = policy.validate(PolicyBounds.from_config(config()), **values)
    except PolicyError as exc:
        response = api_error(400, "invalid_policy", "Some values are out of bounds.")
        response.set_data(json.dumps({"error": "invalid_policy",
                                      "error_description": "Some values are out of bounds.",
                                      "fields": exc.errors}))
        return response
    if request.args.get("dry_run") in ("1", "true", "yes"):
        impact = policy_changes.preview(account, new, now(),
                                        end_password_only=end_password_only).as_dict()
        db.session.rollback()
        return jsonify({"dry_run": True, "impact": impact, "changes": {},
                        "policy": policy_json(account)})
    applied = policy_changes.apply(account, new, now=now(), actor=f"admin:{g.user.sub}",
                                   ip=client_ip(), end_password_only=end_password_only)
    db.session.commit()
    return jsonify({"dry_run": False, "impact": applied.impact.as_dict(),
                    "changes": applied.changes, "policy": policy_json(account)})


def refused(exc: roles.Refused):
    """The role ordering forbids it (403 ``forbidden``), or it would leave the account
    without an enabled owner (409 ``last_owner``); nothing was written but the attempt,
    to the audit trail."""
    db.session.rollback()
    roles.record_refusal(exc, now=now(), ip=client_ip())
    db.session.commit()
    return api_error(409 if isinstance(exc, roles.LastOwner) else 403, exc.code, exc.message)


def _member(sub: str) -> User | None:
    user = db.session.scalar(sa.select(User).where(User.sub == sub)) if len(sub) <= 64 else None
    if user is None or user.account_id != g.user.account_id:
        return None
    return user


def user_json(user: User, active_sessions: int) -> dict:
    return {"sub": user.sub, "email": user.email, "name": user.name, "role": user.role,
            "disabled": user.disabled_at is not None, "active_sessions": active_sessions}


@bp.get("/admin/users")
@requires("admin")
@admin_only
def admin_users():
    rows = sessions.members_with_active_counts(g.user.account, now())
    return jsonify({"users": [user_json(u, count) for u, count in rows]})


@bp.patch("/admin/users/<sub>")
@requires("admin")
@admin_only
def admin_update_user(sub: str):
    """``{"role": …}`` and/or ``{"disabled": true|false}``, as on the users page: under the
    role ordering and the owner rule (``roles``), in one transaction. Disabling ends every
    session of the user, with back-channel logout."""
    user = _member(sub)
    if user is None:
        return api_error(404, "not_found", "No user of your account has that id.")
    body = request.get_json(silent=True)
    if (not isinstance(body, dict) or not body or set(body) - {"role", "disabled"}
            or ("disabled" in body and not isinstance(body["disabled"], bool))
            or ("role" in body and body["role"] not in tuple(Role))):
        return api_error(400, "invalid_request", 'Send a JSON object with "role" (owner, '
                         'admin or member) and/or "disabled" (true or false).')
    ended: list = []
    try:
        if "role" in body:
            roles.set_role(g.user, user, body["role"], now=now(), ip=client_ip())
        if body.get("disabled") is True:
            ended = roles.disable(g.user, user, now=now(), ip=client_ip()) or []
        elif body.get("disabled") is False:
            roles.enable(g.user, user, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    active = len(sessions.active_sessions(user, now())) if user.disabled_at is None else 0
    return jsonify({"user": user_json(user, active), "sessions_ended": len(ended)})


@bp.get("/admin/users/<sub>/sessions")
@requires("admin")
@admin_only
def admin_user_sessions(sub: str):
    user = _member(sub)
    if user is None:
        return api_error(404, "not_found", "No user of your account has that id.")
    status = request.args.get("status", "all")
    if status not in ("all", "active"):
        return api_error(400, "invalid_request", "status must be 'all' or 'active'.")
    try:
        page = sessions.history(user, now(), retention=config()["SESSION_RETENTION"],
                                only_active=status == "active",
                                cursor=request.args.get("cursor") or None, limit=50,
                                events_per_session=0)
    except sessions.BadCursor:
        return api_error(400, "invalid_cursor", "The cursor is not one this API handed out.")
    db.session.commit()
    return jsonify({"sessions": [session_json(v) for v in page.views],
                    "next_cursor": page.next_cursor})


@bp.delete("/admin/users/<sub>/sessions/<session_id>")
@requires("admin")
@admin_only
def admin_end_session(sub: str, session_id: str):
    user = _member(sub)
    view = sessions.get_for_user(user, session_id, now()) if user else None
    if view is None:
        return api_error(404, "not_found", "No such session of a user of your account.")
    try:
        roles.require(g.user, user, action="end_session")
        ended = view.status is sessions.Status.ACTIVE and roles.end_session(
            g.user, view.session, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    view = sessions.get_for_user(user, session_id, now())
    message = "Session ended." if ended else "The session had already ended; nothing changed."
    return jsonify({"ended": bool(ended), "message": message, "session": session_json(view)})


@bp.delete("/admin/users/<sub>/sessions")
@requires("admin")
@admin_only
def admin_end_sessions(sub: str):
    user = _member(sub)
    if user is None:
        return api_error(404, "not_found", "No user of your account has that id.")
    try:
        ended = roles.end_sessions(g.user, user, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    return jsonify({"ended": len(ended), "session_ids": [s.id for s in ended]})


def exempt_from_csrf(csrf) -> None:
    csrf.exempt(bp)


def load_openapi() -> dict:
    return json.loads(OPENAPI.read_text())
