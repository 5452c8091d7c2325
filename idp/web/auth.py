"""Signing in and out at the provider."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    session,
    url_for,
)

from .. import credentials, factors, passkeys, resets, sessions
from ..counters import Limited
from ..models import EndReason, LoginSession, User, db
from ..runtime import client_ip, config, now, origin, services
from . import current
from .forms import ActionForm, CodeForm, ForgotForm, LoginForm, PasskeyForm, ReauthenticateForm

bp = Blueprint("auth", __name__)

PENDING = "pending_authorize"
LIMIT = "limit_reached"
LIMIT_WINDOW = 300
SECOND_FACTOR = "second_factor"
SECOND_FACTOR_WINDOW = 300  # seconds between a right password and its second factor
PASSKEY = "passkey_ceremony"


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
        return _login_page(form, _first_error(form)), 400
    if not form.is_submitted():
        if live is not None and not pending:
            db.session.commit()
            return redirect(url_for("account.sessions_page"), 303)
        if pending and not form.email.data:
            form.email.data = dict(parse_qsl(pending)).get("login_hint", "")[:254]
        db.session.commit()
        return _login_page(form, None)

    email = form.email.data.strip().lower()
    try:
        started = credentials.sign_in(email, form.password.data, origin(), now=now(),
                                      hasher=services().passwords, lockout=services().lockout,
                                      limits=services().limits, replacing=live)
    except credentials.SecondFactorNeeded as needed:
        db.session.commit()
        enrol = isinstance(needed, credentials.EnrolmentNeeded)
        session[SECOND_FACTOR] = {"user": needed.user.id, "version": needed.version,
                                  "until": int(now().timestamp()) + SECOND_FACTOR_WINDOW,
                                  "enrol": enrol}
        return redirect(url_for("auth.enrol" if enrol else "auth.second_factor"), 303)
    except credentials.SignInRefused:
        db.session.commit()
        return _login_page(form, "Incorrect email or password."), 401
    except (credentials.Throttled, sessions.SessionLimitReached) as refused:
        return _refused(refused, "login.html", form)
    return _signed_in(started, pending, after)


def relying_party() -> passkeys.RelyingParty:
    """The passkeys' relying party: the issuer's host and origin."""
    return passkeys.relying_party(config()["ISSUER"])


def _login_page(form: LoginForm, error: str | None) -> str:
    return render_template("login.html", form=form, error=error,
                           passkey_form=PasskeyForm(formdata=None),
                           passkeys_usable=relying_party().id is not None)


@bp.route("/login/forgot", methods=["GET", "POST"])
def forgot_password():
    """Ask for a reset link. The answer is the same whether or not an account uses the
    address, and so is the work done (``resets.request``)."""
    form = ForgotForm()
    if not form.validate_on_submit():
        error = "Type the email address you sign in with." if form.is_submitted() else None
        return render_template("forgot.html", form=form, sent_to=None, error=error), (
            400 if error else 200)
    address = form.email.data.strip().lower()
    services().limits.reserve("RESETS_PER_IP", client_ip())
    try:
        # Keyed by an address anyone can type: past it, nothing more is sent (the owner
        # already has working links), but nobody is refused, so nobody can lock a user
        # out of their own reset.
        services().limits.reserve("RESETS_PER_ADDRESS", address)
    except Limited:
        pass
    else:
        resets.request(address, now=now())
    db.session.commit()
    return render_template("forgot.html", form=form, sent_to=address, error=None)


@bp.post("/passkey/options/<purpose>")
def passkey_options(purpose: str):
    """The options of a passkey ceremony, for ``navigator.credentials`` (JSON); the
    ceremony's id stays in this browser's session until its answer is posted."""
    if purpose not in passkeys.PURPOSES or not ActionForm().validate_on_submit():
        return _json_error("The page expired. Reload it and try again.", 400)
    services().limits.reserve("PASSKEY_CEREMONIES_PER_IP", client_ip())
    user = _ceremony_user(purpose)
    if user is None and purpose != passkeys.SIGN_IN:
        db.session.commit()
        return _json_error("Your session expired. Reload the page and sign in again.", 401)
    rp = relying_party()
    try:
        ceremony = passkeys.registration_options(user, rp, now=now()) \
            if purpose == passkeys.REGISTER \
            else passkeys.authentication_options(rp, purpose, now=now(), user=user)
    except passkeys.PasskeyRefused as refused:
        return _json_error(str(refused), 400)
    db.session.commit()
    session[PASSKEY] = {"purpose": purpose, "id": ceremony.id}
    return Response(ceremony.options, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})


def _ceremony_user(purpose: str) -> User | None:
    """Whose passkeys a ceremony is about: the signed-in user (adding one needs a recent
    authentication), the user whose password was just right (their second factor, or
    the first one their account requires), or nobody (sign-in: the browser offers this
    site's passkeys)."""
    waiting = session.get(SECOND_FACTOR)
    if not waiting or waiting["until"] < now().timestamp():
        waiting = None
    if purpose == passkeys.SECOND_FACTOR or (purpose == passkeys.REGISTER and waiting
                                             and waiting.get("enrol")):
        return db.session.get(User, waiting["user"]) if waiting else None
    live = current.login_session() if purpose != passkeys.SIGN_IN else None
    if live is None or (purpose == passkeys.REGISTER and not sessions.recently_authenticated(
            live, now(), config()["REAUTHENTICATE_AFTER"])):
        return None
    return live.user


def _json_error(description: str, status: int):
    response = jsonify(error="invalid_request", error_description=description)
    response.status_code = status
    return response


def passkey_answer(purpose: str, form: PasskeyForm) -> passkeys.Answer:
    """The answer posted with the ceremony this browser started for ``purpose``."""
    ceremony = session.pop(PASSKEY, None) or {}
    return passkeys.Answer(ceremony.get("id", "") if ceremony.get("purpose") == purpose else "",
                           form.credential.data or "", relying_party())


@bp.post("/login/passkey")
def login_passkey():
    """Sign in with a passkey alone: no email typed, the browser offered the passkeys."""
    pending, after = session.get(PENDING), session.get("after_login")
    g.form_action = _form_action_for(pending)
    form = PasskeyForm()
    if not form.validate_on_submit():
        return _login_page(LoginForm(formdata=None), "The form expired. Try again."), 400
    try:
        started = credentials.sign_in_with_passkey(
            passkey_answer(passkeys.SIGN_IN, form), origin(), now=now(),
            limits=services().limits, replacing=current.login_session())
    except credentials.SignInRefused:
        db.session.commit()
        return _login_page(LoginForm(formdata=None),
                           "That passkey was not accepted. Try again, or sign in with your "
                           "email and password."), 401
    except sessions.SessionLimitReached as refused:
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
    """Confirm it is you, in this session: one of your passkeys, or the password and the
    authenticator app's code when a relying party asked for a second factor
    (``acr_values=mfa``) or the session had one. The session keeps its id; then back to
    the authorization request or the page that asked."""
    live = current.login_session()
    if live is None:
        db.session.commit()
        return redirect(url_for("auth.login"), 303)
    mfa = _second_factor_wanted(live)
    form = ReauthenticateForm()
    if not form.is_submitted():
        return _again_page(live, form, mfa, None)
    if not form.validate():
        return _again_page(live, form, mfa, "Enter your password.", 400)
    return _confirmed(live, form, mfa, password=form.password.data, code=form.code.data)


@bp.post("/login/again/passkey")
def reauthenticate_passkey():
    """Confirm it is you with one of your passkeys (its PIN or biometric: both factors)."""
    live = current.login_session()
    if live is None:
        db.session.commit()
        return redirect(url_for("auth.login"), 303)
    mfa = _second_factor_wanted(live)
    form = PasskeyForm()
    if not form.validate_on_submit():
        return _again_page(live, ReauthenticateForm(formdata=None), mfa,
                           "The form expired. Try again.", 400)
    return _confirmed(live, ReauthenticateForm(formdata=None), mfa,
                      passkey=passkey_answer(passkeys.CONFIRM, form))


def _second_factor_wanted(live: LoginSession) -> bool:
    """Whether the step-up this browser was sent for asks this session for a second factor."""
    wanted = session.get(STEP_UP)
    return bool(wanted and wanted.get("sid") == live.id and wanted.get("mfa"))


def _again_page(live: LoginSession, form: ReauthenticateForm, mfa: bool, error: str | None,
                status: int = 200):
    g.form_action = _form_action_for(session.get(PENDING))
    user = live.user
    has_passkey = bool(passkeys.passkeys(user)) and relying_party().id is not None
    db.session.commit()
    return render_template(
        "login_again.html", form=form, mfa=mfa, user=user, error=error,
        has_passkey=has_passkey, passkey_form=PasskeyForm(formdata=None),
        password_works=not mfa or factors.has_authenticator_app(user)
        or factors.recovery_codes_left(user) > 0), status


def _confirmed(live: LoginSession, form: ReauthenticateForm, mfa: bool, *,
               password: str | None = None, code: str | None = None,
               passkey: passkeys.Answer | None = None):
    pending, after = session.get(PENDING), session.get("after_login")
    try:
        credentials.reauthenticate(live, password, code, mfa=mfa, now=now(), ip=client_ip(),
                                   hasher=services().passwords, lockout=services().lockout,
                                   limits=services().limits, sealer=services().sealer,
                                   passkey=passkey)
    except credentials.SignInRefused:
        db.session.commit()
        error = ("That passkey was not accepted. Try again." if passkey else
                 "That is not right." + (" Check the password and the newest code."
                                         if mfa else ""))
        return _again_page(live, form, mfa, error, 401)
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
    sealer, issuer = services().sealer, issuer_name()
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
        return _enrol_page(started, form, error)
    try:
        signed_in, codes = credentials.enrol_and_sign_in(
            user.id, waiting["version"], started.factor_id, form.code.data, origin(),
            now=now(), sealer=sealer, replacing=current.login_session())
    except credentials.SignInRefused:
        db.session.commit()
        return _enrol_page(started, form, "That code is not right. Enter the code your app "
                                          "shows now.", 401)
    db.session.commit()
    target = _resume_target(pending, after)
    session.clear()  # no session fixation: every pre-login browser value goes
    response = current_app.make_response(render_template(
        "account/recovery_codes.html", codes=codes, next_url=target))
    current.set_cookie(response, signed_in.cookie, signed_in.session)
    return response


def _enrol_page(started: factors.Enrolment, form: CodeForm, error: str | None,
                status: int | None = None):
    return render_template("login_enrol.html", enrolment=started, form=form, error=error,
                           passkey_form=PasskeyForm(formdata=None),
                           passkeys_usable=relying_party().id is not None
                           ), status or (400 if error else 200)


@bp.post("/login/enrol/passkey")
def enrol_passkey():
    """The account requires a second factor: a passkey made now is one, and the session
    opens with the password and that passkey."""
    pending, after = session.get(PENDING), session.get("after_login")
    waiting = _waiting()
    if waiting is None or not waiting.get("enrol"):
        return redirect(url_for("auth.login"), 303)
    form = PasskeyForm()
    if not form.validate_on_submit():
        return redirect(url_for("auth.enrol"), 303)
    try:
        signed_in, codes = credentials.enrol_passkey_and_sign_in(
            waiting["user"], waiting["version"], passkey_answer(passkeys.REGISTER, form),
            form.label.data or "", origin(), now=now(), replacing=current.login_session())
    except credentials.SignInRefused:
        db.session.commit()
        flash("Your browser's passkey could not be verified. Try again, or set up an "
              "authenticator app.", "info")
        return redirect(url_for("auth.enrol"), 303)
    db.session.commit()
    target = _resume_target(pending, after)
    session.clear()  # no session fixation: every pre-login browser value goes
    response = current_app.make_response(render_template(
        "account/recovery_codes.html", codes=codes, next_url=target))
    current.set_cookie(response, signed_in.cookie, signed_in.session)
    return response


def issuer_name() -> str:
    """What authenticator apps show above the code: the issuer's host."""
    return urlsplit(config()["ISSUER"]).hostname or "Identity"


@bp.route("/login/code", methods=["GET", "POST"])
def second_factor():
    """The second step of a sign-in: a code from the authenticator app, a recovery
    code, or a passkey. Only after a right password in this browser, for a few minutes."""
    waiting = _waiting()
    if waiting is None:
        return redirect(url_for("auth.login"), 303)
    form = CodeForm()
    if not form.is_submitted():
        return _code_page(waiting, form, None)
    if not form.validate():
        return _code_page(waiting, form, "Enter the 6-digit code, or a recovery code.", 400)
    return _second_factor(waiting, form.code.data, form)


@bp.post("/login/code/passkey")
def second_factor_passkey():
    waiting = _waiting()
    if waiting is None:
        return redirect(url_for("auth.login"), 303)
    form = PasskeyForm()
    if not form.validate_on_submit():
        return _code_page(waiting, CodeForm(formdata=None), "The form expired. Try again.", 400)
    return _second_factor(waiting, passkey_answer(passkeys.SECOND_FACTOR, form),
                          CodeForm(formdata=None))


def _waiting() -> dict | None:
    """The right password this browser sent in the last few minutes, if any."""
    waiting = session.get(SECOND_FACTOR)
    if not waiting or waiting["until"] < now().timestamp():
        session.pop(SECOND_FACTOR, None)
        flash("Your sign-in took too long. Enter your email and password again.", "info")
        return None
    return waiting


def _code_page(waiting: dict, form: CodeForm, error: str | None, status: int = 200):
    g.form_action = _form_action_for(session.get(PENDING))
    user = db.session.get(User, waiting["user"])
    has_passkey = user is not None and bool(passkeys.passkeys(user)) \
        and relying_party().id is not None
    db.session.commit()
    return render_template("login_code.html", form=form, error=error, has_passkey=has_passkey,
                           passkey_form=PasskeyForm(formdata=None)), status


def _second_factor(waiting: dict, proof: str | passkeys.Answer, form: CodeForm):
    pending, after = session.get(PENDING), session.get("after_login")
    g.form_action = _form_action_for(pending)
    try:
        started = credentials.complete_second_factor(
            waiting["user"], waiting["version"], proof, origin(), now=now(),
            lockout=services().lockout, limits=services().limits, sealer=services().sealer,
            replacing=current.login_session())
    except credentials.SignInRefused:
        db.session.commit()
        error = ("That passkey was not accepted. Try again, or enter a code."
                 if isinstance(proof, passkeys.Answer)
                 else "That code is not right. Try the newest one.")
        return _code_page(waiting, form, error, 401)
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
