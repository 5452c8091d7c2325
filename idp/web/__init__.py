"""Surfaces: one blueprint per surface, plus what every response shares
(CSRF, security headers, error pages in the caller's format)."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, make_response, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, InternalServerError

from ..counters import Limited
from ..metrics import LIMITED
from ..models import db
from ..runtime import remember_device

csrf = CSRFProtect()
log = logging.getLogger("idp")

# A strict policy: no inline script, no framing (clickjacking on login and consent);
# scripts may fetch only from this origin (the passkey ceremony's options).
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
    "connect-src 'self'; "
    "form-action 'self' {form_action}; frame-ancestors 'none'; base-uri 'none'"
)

MESSAGES = {
    400: "The request could not be understood.",
    403: "You are not allowed to do that.",
    404: "There is nothing here.",
    405: "That method is not allowed here.",
    413: "The request is too large.",
    429: "Too many requests. Wait a moment and try again.",
    500: "Something went wrong on our side. Try again in a moment.",
    503: "The service is briefly unavailable. Try again in a moment.",
}


def wants_json() -> bool:
    if request.path == "/oauth/end-session":
        return False  # a page people see
    if request.path.startswith(("/api/", "/oauth/", "/.well-known/", "/userinfo")):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes[
        "text/html"
    ]


def error_response(status: int, message: str | None = None, error: str | None = None):
    message = message or MESSAGES.get(status, "Something went wrong.")
    if wants_json():
        body = {"error": error or _oauth_code(status), "error_description": message}
        return jsonify(body), status
    try:
        return render_template("errors/error.html", status=status, message=message), status
    except SQLAlchemyError:
        # The menu names the signed-in user, whose row the rollback before this page
        # expired; with the database gone, reading it again fails. The page without it.
        db.session.rollback()
        g.pop("idp_session", None)
        return render_template("errors/error.html", status=status, message=message), status


def _oauth_code(status: int) -> str:
    return {
        400: "invalid_request",
        401: "invalid_client",
        403: "access_denied",
        404: "not_found",
        405: "invalid_request",
        413: "invalid_request",
        429: "slow_down",
        503: "temporarily_unavailable",
    }.get(status, "server_error")


def _has_nul(current) -> bool:
    """NUL is never valid in our inputs, and PostgreSQL refuses it in text columns."""
    query = current.query_string
    if "\x00" in current.path or b"%00" in query or b"\x00" in query:
        return True
    if "\x00" in current.headers.get("Authorization", ""):
        return True
    if current.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return False
    mimetype = current.mimetype
    if mimetype == "application/x-www-form-urlencoded":
        # Decoded, a NUL can only come from "%00" or a raw NUL byte: the bytes say it
        # without parsing the form (the hot endpoints parse it their own way).
        body = current.get_data(cache=True)
        return b"%00" in body or b"\x00" in body
    if mimetype == "multipart/form-data":
        return any("\x00" in key or "\x00" in value for key, value in current.form.items(multi=True))
    return False


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building the signer for a request that
    carries no session cookie (every API and token-endpoint call): it cost more than a
    tenth of a bare request."""

    def open_session(self, app: Flask, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def register(app: Flask) -> None:
    from . import account, admin, api, auth, device, email_links, filters, mailer, oidc, ops

    app.session_interface = CookieSessions()
    ops.install(app)
    mailer.install(app)
    filters.register(app)
    csrf.init_app(app)
    oidc.exempt_from_csrf(csrf)
    api.exempt_from_csrf(csrf)
    app.register_blueprint(api.bp)
    app.register_blueprint(oidc.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(device.bp)
    app.register_blueprint(email_links.bp)

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        db.session.rollback()
        return error_response(
            400, "The form expired or was sent from another site. Go back, reload and try again."
        )

    @app.errorhandler(Limited)
    def limited(exc: Limited):
        """Over a limit: 429 in the endpoint's own format, with how long to wait."""
        db.session.rollback()
        LIMITED.labels(exc.name).inc()
        response = make_response(error_response(429))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        db.session.rollback()
        response = make_response(error_response(exc.code or 500))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        """Never a stack trace to the caller; the log keeps it (without request secrets)."""
        db.session.rollback()
        if isinstance(exc, HTTPException):
            return http_error(exc)
        from sqlalchemy.exc import DataError, OperationalError

        if isinstance(exc, DataError):  # a value the database refuses: the caller's input
            return error_response(400)
        if isinstance(exc, OperationalError):
            # The database is unreachable (or gave up on the transaction): one line per
            # request, not a traceback each, or an outage floods the log (~10 kB a request)
            # just when operators read it. The driver's first line says what happened.
            detail = (str(exc.orig or exc).strip().splitlines() or [""])[0][:300]
            log.error("unhandled error on %s %s: database unavailable: %s: %s", request.method,
                      request.path, type(exc.orig or exc).__name__, detail)
            return error_response(503)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalServerError.code)

    @app.before_request
    def refuse_oversized():
        """Attacker-sized headers and URLs get a clean 400 before any work is done."""
        current = request._get_current_object()
        if len(current.headers.get("User-Agent", "")) > 8192 or len(current.query_string) > 32768:
            return error_response(400, "The request is too large.")
        if _has_nul(current):
            return error_response(400, "The request contains a NUL character.")
        return None

    app.after_request(remember_device)  # a browser's first sign-in gets its device cookie

    @app.after_request
    def security_headers(response):
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        if response.mimetype == "text/html":
            headers.setdefault(
                "Content-Security-Policy", CSP.format(form_action=g.get("form_action", ""))
            )
            headers.setdefault("X-Frame-Options", "DENY")
            headers.setdefault("Cache-Control", "no-store")
        return response

    @app.teardown_request
    def rollback_leftovers(exc):
        """Anything a request did not commit is undone: no half-written state."""
        if db.session.registry.has():  # (read-only hot paths never open one)
            db.session.rollback()
