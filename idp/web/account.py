"""The signed-in user's own pages: their login sessions, and ending them."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for

from .. import credentials, factors, notices, passkeys, sessions, step_up, verification
from ..models import EndReason, db
from ..runtime import client_ip, config, now, services
from . import current
from .auth import issuer_name, passkey_answer, relying_party, remember_step_up
from .forms import ActionForm, CodeForm, PasskeyForm, PasswordForm

bp = Blueprint("account", __name__, url_prefix="/account")

AFTER_LOGIN = "after_login"


def login_required(view):
    """Pages of a signed-in user; others go to the login page and come back after."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        live = current.login_session()
        if live is None:
            if g.get("expired_reason") in current.EXPIRY_MESSAGES:
                flash(current.EXPIRY_MESSAGES[g.expired_reason], "info")
            db.session.commit()
            if request.method == "GET":
                keep = {k: v for k, v in request.args.items() if k in ("user_code", "view")}
                session[AFTER_LOGIN] = {"endpoint": request.endpoint, "args": keep}
            response = redirect(url_for("auth.login"), 303)
            if current.had_cookie():
                current.clear_cookie(response)
            return response
        g.user = live.user
        return view(*args, **kwargs)

    return wrapper


def recent_authentication(view):
    """Sensitive actions (ASVS V7.5): an authentication in this session at most
    ``IDP_REAUTHENTICATE_AFTER`` old. Otherwise the user proves it again (the password,
    and the code when the session signed in with one), then comes back to the page."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        live = current.login_session()
        if not sessions.recently_authenticated(live, now(), config()["REAUTHENTICATE_AFTER"]):
            back = request.endpoint if request.method == "GET" else "account.security"
            session[AFTER_LOGIN] = {"endpoint": back, "args": {}}
            remember_step_up(step_up.StepUp(
                live.id, mfa="mfa" in (live.amr or ()) and factors.has_second_factor(g.user)))
            db.session.commit()
            flash("Confirm it's you first.", "info")
            return redirect(url_for("auth.reauthenticate"), 303)
        return view(*args, **kwargs)

    return wrapper


def describe_target(view: sessions.SessionView) -> str:
    """"Chrome on macOS in Paris" — the words the confirmation and flash messages use."""
    s = view.session
    if s.location in ("This computer", "Local network"):
        return f"{s.device_label} ({s.location.lower()})"
    if s.location in ("Unknown location", ""):
        return s.device_label
    return f"{s.device_label} in {s.location}"


def revokes_text(apps: list[sessions.AppGrant]) -> str:
    """" and revokes access for 2 apps: Photos, Mail", or nothing when no app holds tokens."""
    if not apps:
        return ""
    names = ", ".join(a.name for a in apps)
    count = len(apps)
    return f" and revokes access for {count} app{'s' if count != 1 else ''}: {names}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


@bp.get("")
@login_required
def index():
    db.session.commit()
    return redirect(url_for("account.sessions_page"), 303)


@bp.get("/sessions")
@login_required
def sessions_page():
    only_active = request.args.get("view") == "active"
    try:
        page = sessions.history(
            g.user, now(), retention=config()["SESSION_RETENTION"], only_active=only_active,
            cursor=request.args.get("cursor") or None, limit=25,
        )
    except sessions.BadCursor:
        abort(400)
    db.session.commit()
    return render_template(
        "account/sessions.html",
        page=page,
        only_active=only_active,
        current_id=current.login_session().id,
        now=now(),
        user=g.user,
        event_text=sessions.EVENT_TEXT,
        reason_text={str(k): v for k, v in sessions.REASON_TEXT.items()},
    )


def _own(session_id: str) -> sessions.SessionView:
    view = sessions.get_for_user(g.user, session_id, now())
    if view is None:
        abort(404)
    return view


@bp.route("/sessions/<session_id>/end", methods=["GET", "POST"])
@login_required
def end_one(session_id: str):
    view = _own(session_id)
    live = current.login_session()
    is_current = view.session.id == live.id
    form = ActionForm()
    if view.status is not sessions.Status.ACTIVE:
        db.session.commit()
        flash(f"That session ({describe_target(view)}) had already ended. Nothing to do.", "info")
        return redirect(url_for("account.sessions_page"), 303)
    if request.method == "GET" or not form.validate_on_submit():
        db.session.commit()
        action = "Log out" if is_current else "End session"
        return render_template(
            "account/confirm.html", form=form, action=action,
            title="Log out of this device?" if is_current else "End this session?",
            summary=f"Signs out {describe_target(view)}{revokes_text(view.active_apps)}.",
            back=url_for("account.sessions_page"),
        )
    reason = EndReason.LOGOUT if is_current else EndReason.ENDED_BY_USER
    sessions.end(view.session, reason, now=now(), actor=f"user:{g.user.sub}", ip=client_ip())
    db.session.commit()
    if is_current:
        return _signed_out("You have been signed out.")
    flash(f"Ended the session on {describe_target(view)}.", "success")
    return redirect(url_for("account.sessions_page"), 303)


def _signed_out(message: str):
    session.clear()
    flash(message, "info")
    response = redirect(url_for("auth.login"), 303)
    current.clear_cookie(response)
    return response


def active_views(user) -> list[sessions.SessionView]:
    """The user's active sessions with their apps (what the bulk confirmations describe)."""
    return sessions.history(user, now(), retention=config()["SESSION_RETENTION"],
                            only_active=True, limit=1000, events_per_session=0).views


def apps_of(views: list[sessions.SessionView]) -> list[sessions.AppGrant]:
    """Each app once, whichever of the sessions it holds tokens under."""
    return list({a.client_id: a for v in views for a in v.active_apps}.values())


def _confirm_bulk(form, *, include_current: bool):
    live = current.login_session()
    views = [v for v in active_views(g.user) if include_current or v.session.id != live.id]
    db.session.commit()
    if include_current:
        action, title = "End all sessions", "End all your sessions, including this one?"
        summary = (f"Signs out all {_plural(len(views), 'session')}, this device included"
                   f"{revokes_text(apps_of(views))}.")
    else:
        action, title = "End all other sessions", "End all your other sessions?"
        summary = (f"Signs out {_plural(len(views), 'other session')}"
                   f"{revokes_text(apps_of(views))}. This device stays signed in.")
    return render_template("account/confirm.html", form=form, action=action, title=title,
                           summary=summary, back=url_for("account.sessions_page"))


@bp.route("/sessions/end-others", methods=["GET", "POST"])
@login_required
@recent_authentication
def end_others():
    form = ActionForm()
    if request.method == "GET" or not form.validate_on_submit():
        return _confirm_bulk(form, include_current=False)
    ended = sessions.end_all(g.user, EndReason.ENDED_ALL, now=now(), actor=f"user:{g.user.sub}",
                             ip=client_ip(), keep=current.login_session().id)
    db.session.commit()
    flash(f"Ended {_plural(len(ended), 'other session')}. This device stays signed in.",
          "success")
    return redirect(url_for("account.sessions_page"), 303)


@bp.route("/sessions/end-all", methods=["GET", "POST"])
@login_required
@recent_authentication
def end_all():
    form = ActionForm()
    if request.method == "GET" or not form.validate_on_submit():
        return _confirm_bulk(form, include_current=True)
    ended = sessions.end_all(g.user, EndReason.ENDED_ALL, now=now(), actor=f"user:{g.user.sub}",
                             ip=client_ip())
    db.session.commit()
    return _signed_out(f"Ended {_plural(len(ended), 'session')}. Sign in again to continue.")


@bp.route("/password", methods=["GET", "POST"])
@login_required
@recent_authentication
def change_password():
    """A new password ends every other session of the user; this one stays."""
    form = PasswordForm()
    error = None
    if form.validate_on_submit():
        try:
            ended = credentials.change_password(
                g.user, current=form.current.data, new=form.new.data, confirm=form.confirm.data,
                hasher=services().passwords, lockout=services().lockout,
                keep=current.login_session(), now=now(), ip=client_ip())
        except credentials.LockedOut as locked:
            db.session.commit()
            return _signed_out(str(locked))
        except credentials.PasswordChangeRefused as refused:
            error = str(refused)
        else:
            db.session.commit()
            flash(f"Password changed. Signed out {_plural(len(ended), 'other session')}; "
                  "this one stays.", "success")
            return redirect(url_for("account.sessions_page"), 303)
    elif form.is_submitted():
        error = "Fill in all three fields."
    db.session.commit()
    return render_template("account/password.html", form=form, error=error), (
        400 if error else 200)


# -- second factors ---------------------------------------------------------------------


@bp.get("/security")
@login_required
def security():
    """The user's passkeys, authenticator apps and recovery codes."""
    enrolled = factors.confirmed(g.user)
    left = factors.recovery_codes_left(g.user)
    db.session.commit()
    return render_template(
        "account/security.html", form=ActionForm(), now=now(), recovery_left=left,
        passkeys=[f for f in enrolled if f.kind == passkeys.KIND],
        apps=[f for f in enrolled if f.kind == factors.TOTP],
        passkeys_problem=relying_party().problem, user=g.user)


@bp.post("/security/verify-email")
@login_required
def send_verification():
    """The verification link again: counted per address as resets are, on a count of its
    own (reset requests for the address, which anyone can send, never block this)."""
    if not ActionForm().validate_on_submit():
        abort(400)
    if not g.user.email_verified:
        services().limits.reserve("RESETS_PER_ADDRESS", f"verify:{g.user.email}")
        verification.request(g.user, now=now())
    db.session.commit()
    flash(f"Sent a new link to {g.user.email}.", "success")
    return redirect(url_for("account.security"), 303)


@bp.post("/security/notices")
@login_required
@recent_authentication
def set_notices():
    """New-device sign-in notices on or off (an account that requires them keeps them)."""
    if not ActionForm().validate_on_submit() or request.form.get("on") not in ("true", "false"):
        abort(400)
    notices.choose(g.user, request.form["on"] == "true", now=now(), ip=client_ip())
    db.session.commit()
    flash("Saved.", "success")
    return redirect(url_for("account.security"), 303)


@bp.route("/security/passkey", methods=["GET", "POST"])
@login_required
@recent_authentication
def add_passkey():
    """Name a new passkey and let the browser make it (``static/passkey.js``); the first
    second factor also brings recovery codes, shown once."""
    form = PasskeyForm()
    error = None
    if form.validate_on_submit():
        try:
            added = passkeys.register(g.user, passkey_answer(passkeys.REGISTER, form),
                                      form.label.data or "", now=now(), ip=client_ip())
        except passkeys.PasskeyRefused as refused:
            db.session.rollback()
            error = str(refused)
        else:
            db.session.commit()
            if added.recovery_codes:
                return render_template("account/recovery_codes.html",
                                       codes=added.recovery_codes)
            flash(f"Added the passkey \u201c{added.factor.label}\u201d.", "success")
            return redirect(url_for("account.security"), 303)
    elif form.is_submitted():
        error = "Your browser sent no passkey. Try again."
    db.session.commit()
    return render_template("account/passkey.html", passkey_form=PasskeyForm(formdata=None),
                           problem=relying_party().problem, error=error), 400 if error else 200


@bp.post("/security/totp")
@login_required
@recent_authentication
def start_totp():
    if not ActionForm().validate_on_submit():
        abort(400)
    started = factors.start_totp(g.user, issuer_name=issuer_name(), sealer=services().sealer,
                                 now=now())
    db.session.commit()
    return redirect(url_for("account.confirm_totp", factor_id=started.factor_id), 303)


@bp.route("/security/totp/<factor_id>", methods=["GET", "POST"])
@login_required
def confirm_totp(factor_id: str):
    """Scan the QR code (or type the key), then prove it with the app's first code; the
    recovery codes are shown once, on the answer."""
    enrolment = factors.enrolment(g.user, factor_id, issuer_name=issuer_name(),
                                  sealer=services().sealer)
    if enrolment is None:
        abort(404)
    form = CodeForm()
    error = None
    if form.validate_on_submit():
        codes = factors.confirm_totp(g.user, factor_id, form.code.data,
                                     sealer=services().sealer, now=now(), ip=client_ip())
        if codes is not None:
            db.session.commit()
            return render_template("account/recovery_codes.html", codes=codes)
        error = "That code is not right. Enter the code your app shows now."
    elif form.is_submitted():
        error = "Enter the 6-digit code your app shows."
    db.session.commit()
    return render_template("account/totp.html", enrolment=enrolment, form=form,
                           error=error), 400 if error else 200


@bp.post("/security/<factor_id>/remove")
@login_required
@recent_authentication
def remove_factor(factor_id: str):
    """Remove a second factor: sign-in gets weaker, so every other session ends."""
    if not ActionForm().validate_on_submit():
        abort(400)
    ended = factors.remove(g.user, factor_id, now=now(), actor=f"user:{g.user.sub}",
                           keep=current.login_session().id, ip=client_ip())
    db.session.commit()
    flash(f"Removed. Signed out {_plural(len(ended), 'other session')}; this one stays.",
          "success")
    return redirect(url_for("account.security"), 303)
