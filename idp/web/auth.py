"""Signing in and out at the provider."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    session,
    url_for,
)

from .. import credentials, factors, sessions
from ..models import EndReason, LoginSession, User, db
from ..runtime import client_ip, config, now, origin, services
from . import current
from .forms import ActionForm, CodeForm, LoginForm, ReauthenticateForm

bp = Blueprint("auth", __name__)

PENDING = "pending_authorize"
LIMIT = "limit_reached"
LIMIT_WINDOW = 300
SECOND_FACTOR = "second_factor"
SECOND_FACTOR_WINDOW = 300  # seconds between a right password and its second factor


def remember_authorization(query: str) -> None:
    """Keep the authorization request while the user signs in (signed Flask cookie)."""
    session[PENDING] = query


STEP_UP = "step_up"


def remember_step_up(step) -> None:
    """What the re-authentication page must ask for (``step_up.StepUp``)."""
    session[STEP_UP] = {"sid": step.session_id, "mfa": step.mfa}


AFTER_LOGIN_PAGES = {"account.sessions_page", "device.enter", "admin.settings", "admin.users",
                     "account.security", "account.end_others", "account.end_all"}


def _resume_target(pending: str | None, after: dict | None) -> str:
    """Only ever our own pages, never a caller-supplied URL (no open redirect)."""
    if not pending:
        if isinstance(after, dict) and after.get("endpoint") in AFTER_LOGIN_PAGES:
            args = {k: str(v)[:40] for k, v in (after.get("args") or {}).items()
                    if k in ("user_code", "view")}
            return url_for(after["endpoint"], **args)
        return url_for("account.sessions_page")
    params = []
    for key, value in parse_qsl(pending, keep_blank_values=True):
        if key == "prompt":
            # The user has just signed in: "login" is satisfied; keep the rest.
            value = " ".join(p for p in value.split() if p != "login")
            if not value:
                continue
        if key == "max_age":
            continue  # just authenticated: satisfied (auth_time says when)
        params.append((key, value))
    return url_for("oidc.authorize") + "?" + urlencode(params)


def _form_action_for(pending: str | None) -> str:
    """After the login form, the browser is redirected to the client: CSP's
    form-action must allow that origin or Chromium blocks the redirect."""
    for key, value in parse_qsl(pending or ""):
        if key == "redirect_uri":
            parts = urlsplit(value)
            if parts.scheme in ("http", "https") and parts.netloc:
                return f"{parts.scheme}://{parts.netloc}"
    return ""


@bp.route("/login", methods=["GET", "POST"])
def login():
    pending = session.get(PENDING)
    after = session.get("after_login")
    g.form_action = _form_action_for(pending)
    form = LoginForm()
    live = current.login_session()
    if g.get("expired_reason") in current.EXPIRY_MESSAGES:
        flash(current.EXPIRY_MESSAGES[g.expired_reason], "info")
        db.session.commit()
    if form.is_submitted() and not form.validate():
        return render_template("login.html", form=form, error=_first_error(form)), 400
    if not form.is_submitted():
        if live is not None and not pending:
            db.session.commit()
            return redirect(url_for("account.sessions_page"), 303)
        if pending and not form.email.data:
            form.email.data = dict(parse_qsl(pending)).get("login_hint", "")[:254]
        db.session.commit()
        return render_template("login.html", form=form, error=None)

    email = form.email.data.strip().lower()
    try:
        started = credentials.sign_in(email, form.password.data, origin(), now=now(),
                                      hasher=services().passwords, lockout=services().lockout,
                                      limits=services().limits, replacing=live)
    except credentials.SecondFactorNeeded as needed:
        db.session.commit()
        session[SECOND_FACTOR] = {"user": needed.user.id, "version": needed.version,
                                  "until": int(now().timestamp()) + SECOND_FACTOR_WINDOW}
        enrol = isinstance(needed, credentials.EnrolmentNeeded)
        return redirect(url_for("auth.enrol" if enrol else "auth.second_factor"), 303)
    except credentials.SignInRefused:
        db.session.commit()
        return render_template(
            "login.html", form=form, error="Incorrect email or password."
        ), 401
    except (credentials.Throttled, sessions.SessionLimitReached) as refused:
        return _refused(refused, "login.html", form)
    return _signed_in(started, pending, after)


def _refused(refused: Exception, template: str, form):
    """A throttled attempt, or a sign-in past the concurrent-session limit."""
    db.session.commit()
    if isinstance(refused, sessions.SessionLimitReached):
        # The password was right: for a few minutes this browser may end one of the
        # sessions listed, then sign in again.
        session.pop(SECOND_FACTOR, None)
        session[LIMIT] = {"user": refused.user.id,
                          "until": int(now().timestamp()) + LIMIT_WINDOW}
        return render_template("limit.html", sessions=refused.active, user=refused.user,
                               form=ActionForm(), now=now()), 409
    attempt = refused.attempt
    message = (
        f"Too many failed attempts. Try again in {_minutes(attempt.retry_after)}."
        if attempt.locked else
        f"Too many failed attempts. Wait {attempt.retry_after} seconds and try again."
    )
    response = current_app.make_response(
        (render_template(template, form=form, error=message), 429))
    response.headers["Retry-After"] = str(attempt.retry_after)
    return response


def _signed_in(started: sessions.Started, pending: str | None, after: dict | None):
    db.session.commit()
    session.clear()  # no session fixation: every pre-login browser value goes
    response = redirect(_resume_target(pending, after), 303)
    current.set_cookie(response, started.cookie, started.session)
    return response


@bp.route("/login/again", methods=["GET", "POST"])
def reauthenticate():
    """Confirm it is you, in this session: the password, and the authenticator app's code
    when a relying party asked for a second factor (``acr_values=mfa``) or the session
    had one. The session keeps its id; then back to the authorization request."""
    pending, after = session.get(PENDING), session.get("after_login")
    g.form_action = _form_action_for(pending)
    live = current.login_session()
    if live is None:
        db.session.commit()
        return redirect(url_for("auth.login"), 303)
    wanted = session.get(STEP_UP)
    mfa = bool(wanted and wanted.get("sid") == live.id and wanted.get("mfa"))
    form = ReauthenticateForm()
    if not form.is_submitted():
        db.session.commit()
        return render_template("login_again.html", form=form, mfa=mfa, user=live.user,
                               error=None)
    if not form.validate():
        return render_template("login_again.html", form=form, mfa=mfa, user=live.user,
                               error="Enter your password."), 400
    try:
        credentials.reauthenticate(live, form.password.data, form.code.data, mfa=mfa,
                                   now=now(), ip=client_ip(), hasher=services().passwords,
                                   lockout=services().lockout, limits=services().limits,
                                   sealer=services().sealer)
    except credentials.SignInRefused:
        db.session.commit()
        error = "That is not right." + (" Check the password and the newest code." if mfa else "")
        return render_template("login_again.html", form=form, mfa=mfa, user=live.user,
                               error=error), 401
    except credentials.Throttled as throttled:
        return _refused(throttled, "login_again.html", form)
    db.session.commit()
    session.pop(STEP_UP, None)
    session.pop(PENDING, None)
    return redirect(_resume_target(pending, after), 303)


@bp.route("/login/enrol", methods=["GET", "POST"])
def enrol():
    """The account requires a second factor and this user has none: after the right
    password, they set up an authenticator app here, and only then is the session
    opened (with both factors)."""
    pending, after = session.get(PENDING), session.get("after_login")
    waiting = session.get(SECOND_FACTOR)
    if not waiting or waiting["until"] < now().timestamp():
        session.pop(SECOND_FACTOR, None)
        flash("Your sign-in took too long. Enter your email and password again.", "info")
        return redirect(url_for("auth.login"), 303)
    user = db.session.get(User, waiting["user"])
    sealer, issuer = services().sealer, _issuer_host()
    started = factors.enrolment(user, waiting.get("factor", ""), issuer_name=issuer,
                                sealer=sealer) if waiting.get("factor") else None
    if started is None:
        started = factors.start_totp(user, issuer_name=issuer, sealer=sealer, now=now())
        session[SECOND_FACTOR] = {**waiting, "factor": started.factor_id}
        db.session.commit()
    form = CodeForm()
    if not form.validate_on_submit():
        db.session.commit()
        error = "Enter the 6-digit code your app shows." if form.is_submitted() else None
        return render_template("login_enrol.html", enrolment=started, form=form,
                               error=error), 400 if error else 200
    try:
        signed_in, codes = credentials.enrol_and_sign_in(
            user.id, waiting["version"], started.factor_id, form.code.data, origin(),
            now=now(), sealer=sealer, replacing=current.login_session())
    except credentials.SignInRefused:
        db.session.commit()
        return render_template("login_enrol.html", enrolment=started, form=form,
                               error="That code is not right. Enter the code your app "
                                     "shows now."), 401
    db.session.commit()
    target = _resume_target(pending, after)
    session.clear()  # no session fixation: every pre-login browser value goes
    response = current_app.make_response(render_template(
        "account/recovery_codes.html", codes=codes, next_url=target))
    current.set_cookie(response, signed_in.cookie, signed_in.session)
    return response


def _issuer_host() -> str:
    return urlsplit(config()["ISSUER"]).hostname or "Identity"


@bp.route("/login/code", methods=["GET", "POST"])
def second_factor():
    """The second step of a sign-in: a code from the authenticator app, or a recovery
    code. Only after a right password in this browser, for a few minutes."""
    pending, after = session.get(PENDING), session.get("after_login")
    g.form_action = _form_action_for(pending)
    waiting = session.get(SECOND_FACTOR)
    form = CodeForm()
    if not waiting or waiting["until"] < now().timestamp():
        session.pop(SECOND_FACTOR, None)
        flash("Your sign-in took too long. Enter your email and password again.", "info")
        return redirect(url_for("auth.login"), 303)
    if not form.is_submitted():
        db.session.commit()
        return render_template("login_code.html", form=form, error=None)
    if not form.validate():
        return render_template("login_code.html", form=form,
                               error="Enter the 6-digit code, or a recovery code."), 400
    live = current.login_session()
    try:
        started = credentials.complete_second_factor(
            waiting["user"], waiting["version"], form.code.data, origin(), now=now(),
            lockout=services().lockout, limits=services().limits, sealer=services().sealer,
            replacing=live)
    except credentials.SignInRefused:
        db.session.commit()
        return render_template("login_code.html", form=form,
                               error="That code is not right. Try the newest one."), 401
    except (credentials.Throttled, sessions.SessionLimitReached) as refused:
        return _refused(refused, "login_code.html", form)
    return _signed_in(started, pending, after)


def _minutes(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _first_error(form: LoginForm) -> str:
    if form.csrf_token.errors:
        return "The form expired. Sign in again."
    return "Enter your email and password."


@bp.route("/logout", methods=["POST"])
def logout():
    form = ActionForm()
    if not form.validate_on_submit():
        return redirect(url_for("auth.login"), 303)
    live = current.login_session()
    if live is not None:
        sessions.end(live, EndReason.LOGOUT, now=now(), actor=f"user:{live.user.sub}",
                     ip=client_ip())
    db.session.commit()
    session.clear()
    flash("You have been signed out.", "info")
    response = redirect(url_for("auth.login"), 303)
    current.clear_cookie(response)
    return response


@bp.post("/login/limit/<session_id>/end")
def end_for_limit(session_id: str):
    """End one of the sessions that blocked a sign-in refused by the concurrent limit."""
    form = ActionForm()
    marker = session.get(LIMIT)
    if not form.validate_on_submit() or not marker or marker["until"] < now().timestamp():
        flash("That page expired. Sign in again to see your sessions.", "info")
        return redirect(url_for("auth.login"), 303)
    target = db.session.get(LoginSession, session_id) if len(session_id) <= 32 else None
    if target is None or target.user_id != marker["user"]:
        abort(404)
    ended = sessions.end(target, EndReason.ENDED_BY_USER, now=now(),
                         actor=f"user:{target.user.sub}", ip=client_ip())
    db.session.commit()
    session.pop(LIMIT, None)
    if ended:
        flash(f"Ended the session on {target.device_label}. Sign in again.", "success")
    else:
        flash("That session had already ended. Sign in again.", "info")
    return redirect(url_for("auth.login"), 303)
