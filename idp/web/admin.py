"""The account administrators' pages: the session policy, the users and their sessions.

Only the account's owners and admins get here; everyone else gets 404, and an
administrator never sees another account's users. Acting on a user goes through
``roles``: an admin acts only on members, an owner on anyone, and the last enabled owner
stays (403 or 409 otherwise, nothing written); the pages offer only what the viewer may do.
"""

from __future__ import annotations

from functools import wraps

import sqlalchemy as sa
from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from .. import factors, policy, policy_changes, roles, sessions
from ..models import (
    LoginSession,
    LogoutAttempt,
    LogoutDelivery,
    MailAttempt,
    MailMessage,
    Role,
    User,
    db,
)
from ..policy import PolicyBounds, PolicyError, SessionPolicy
from ..runtime import client_ip, config, now, services
from . import current, error_response
from .account import active_views, apps_of, describe_target, login_required, revokes_text
from .forms import ActionForm

bp = Blueprint("admin", __name__, url_prefix="/admin")

ADMIN_ROLES = (Role.OWNER, Role.ADMIN)


def admin_required(view):
    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        if g.user.role not in ADMIN_ROLES:
            db.session.commit()
            abort(404)
        return view(*args, **kwargs)

    return wrapper


def words(seconds: int | None) -> str:
    """3600 -> "1 h", 5400 -> "90 min", None -> "Unlimited"."""
    if seconds is None:
        return "Unlimited"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def saved_message(applied: policy_changes.Applied) -> str:
    """What saving did, in the preview's words."""
    if not applied.changes:
        return "Nothing changed."
    impact = applied.impact
    message = "Session policy saved."
    if impact.sessions_ended:
        message += (f" Ended {impact.sessions_ended} active session"
                    f"{'s' if impact.sessions_ended != 1 else ''} past the new limits.")
    return message


def short(seconds: int) -> str:
    """The value an edit field starts with: 24h, 90m, 45s."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def proposed(account, form) -> dict:
    """Values from a tile's form, the account's current values for the other fields."""
    return {
        "max_duration": form.get("max_duration", short(account.max_session_duration)).strip(),
        "idle_timeout": form.get("idle_timeout", short(account.idle_timeout)).strip(),
        "max_concurrent": form.get(
            "max_concurrent",
            "unlimited" if account.max_concurrent_sessions is None
            else str(account.max_concurrent_sessions),
        ).strip(),
        "on_limit": form.get("on_limit", account.on_concurrent_limit).strip(),
        "require_mfa": form.get("require_mfa", "true" if account.require_mfa else "false"),
        "require_notices": form.get("require_notices",
                                    "true" if account.require_new_device_notices else "false"),
    }


@bp.route("/settings/sessions", methods=["GET", "POST"])
@admin_required
def settings():
    account = g.user.account
    bounds = PolicyBounds.from_config(config())
    form = ActionForm()
    errors: dict[str, str] = {}
    preview = None
    values = proposed(account, request.form if request.method == "POST" else {})
    tile = request.form.get("tile") or request.args.get("edit")
    if request.method == "POST" and form.validate_on_submit():
        try:
            new = policy.validate(bounds, **values)
        except PolicyError as exc:
            errors = exc.errors
        else:
            end_password_only = request.form.get("end_password_only") == "1"
            if request.form.get("confirm") == "save":
                applied = policy_changes.apply(account, new, now=now(),
                                               actor=f"admin:{g.user.sub}", ip=client_ip(),
                                               end_password_only=end_password_only)
                db.session.commit()
                flash(saved_message(applied), "success")
                return redirect(url_for("admin.settings"), 303)
            preview = policy_changes.preview(account, new, now(),
                                             end_password_only=end_password_only)
    elif request.method == "POST":
        abort(400)
    db.session.commit()
    status = 400 if errors else 200
    return render_template(
        "admin/settings.html", account=account, bounds=bounds, form=form, errors=errors,
        values=values, preview=preview, tile=tile, words=words, short=short,
        current=SessionPolicy.of(account),
    ), status


def _own_user(sub: str) -> User:
    user = db.session.scalar(sa.select(User).where(User.sub == sub))
    if user is None or user.account_id != g.user.account_id:
        abort(404)
    return user


def refused(exc: roles.Refused):
    """The role ordering forbids it (403), or it would leave no enabled owner (409).
    Nothing of it was written; the attempt is, to the audit trail."""
    db.session.rollback()
    roles.record_refusal(exc, now=now(), ip=client_ip())
    db.session.commit()
    return error_response(409 if isinstance(exc, roles.LastOwner) else 403, exc.message)


@bp.get("/users")
@admin_required
def users():
    account = g.user.account
    rows = sessions.members_with_active_counts(account, now())
    members = [user for user, _ in rows]
    counts = {user.id: count for user, count in rows}
    guard = services().lockout
    locked = {u.id for u in members if guard.locked(u.email)}
    enrolled = factors.enrolled_users([u.id for u in members])
    offers = roles.offers(g.user, members)
    db.session.commit()
    return render_template("admin/users.html", users=members, counts=counts, account=account,
                           locked=locked, enrolled=enrolled, offers=offers, form=ActionForm())


@bp.route("/users/<sub>/factors/reset", methods=["GET", "POST"])
@admin_required
def reset_factors(sub: str):
    """A user lost their phone and their recovery codes: remove their second factors.
    Every session of theirs ends; the next sign-in is with the password alone."""
    user = _own_user(sub)
    form = ActionForm()
    if request.method == "GET" or not form.validate_on_submit():
        try:
            roles.require(g.user, user, action="reset_factors")
        except roles.Refused as exc:
            return refused(exc)
        db.session.commit()
        return render_template(
            "account/confirm.html", form=form, action="Reset second factors",
            title=f"Reset the second factors of {user.email}?",
            summary=f"Removes {user.email}'s authenticator apps and recovery codes and signs "
                    "out all their sessions. They sign in with the password alone and can set "
                    "up a new factor.",
            back=url_for("admin.users"))
    try:
        ended = roles.reset_factors(g.user, user, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    flash(f"Reset the second factors of {user.email}; ended {len(ended)} session(s).", "success")
    return redirect(url_for("admin.users"), 303)


@bp.post("/users/<sub>/unlock")
@admin_required
def unlock(sub: str):
    """Clear a sign-in lockout (too many failed passwords) before it runs out."""
    user = _own_user(sub)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        roles.unlock(g.user, user, lockout=services().lockout, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    flash(f"{user.email} can sign in again.", "success")
    return redirect(url_for("admin.users"), 303)


@bp.route("/users/<sub>/disable", methods=["GET", "POST"])
@admin_required
def disable(sub: str):
    """Disable a user: every session ends at once ("Ended: account disabled")."""
    user = _own_user(sub)
    form = ActionForm()
    if user.id == g.user.id:
        flash("You cannot disable yourself.", "info")
        return redirect(url_for("admin.users"), 303)
    if request.method == "GET" or not form.validate_on_submit():
        try:
            roles.require(g.user, user, action="disable")
        except roles.Refused as exc:
            return refused(exc)
        db.session.commit()
        return render_template(
            "account/confirm.html", form=form, action="Disable user",
            title=f"Disable {user.email}?",
            summary=f"{user.email} can no longer sign in, and all their sessions end now.",
            back=url_for("admin.users"),
        )
    try:
        ended = roles.disable(g.user, user, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    if ended is None:
        flash(f"{user.email} was already disabled. Nothing changed.", "info")
    else:
        flash(f"Disabled {user.email}; ended {len(ended)} session(s).", "success")
    return redirect(url_for("admin.users"), 303)


@bp.post("/users/<sub>/enable")
@admin_required
def enable(sub: str):
    user = _own_user(sub)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        roles.enable(g.user, user, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    flash(f"{user.email} can sign in again.", "success")
    return redirect(url_for("admin.users"), 303)


@bp.post("/users/<sub>/role")
@admin_required
def set_role(sub: str):
    """Give a user another role: owners only (an admin may step down to member), and
    never the last enabled owner's."""
    user = _own_user(sub)
    role = request.form.get("role", "")
    if not ActionForm().validate_on_submit() or role not in tuple(Role):
        abort(400)
    try:
        previous = roles.set_role(g.user, user, role, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    if previous == role:
        flash(f"{user.email} is already {role}. Nothing changed.", "info")
    else:
        flash(f"{user.email} is now {role} (was {previous}).", "success")
    if user.id == g.user.id and role not in ADMIN_ROLES:
        return redirect(url_for("account.sessions_page"), 303)
    return redirect(url_for("admin.users"), 303)


@bp.get("/users/<sub>/sessions")
@admin_required
def user_sessions(sub: str):
    user = _own_user(sub)
    only_active = request.args.get("view") == "active"
    try:
        page = sessions.history(
            user, now(), retention=config()["SESSION_RETENTION"], only_active=only_active,
            cursor=request.args.get("cursor") or None, limit=25,
        )
    except sessions.BadCursor:
        abort(400)
    can_end = roles.may_manage(g.user, user)
    db.session.commit()
    return render_template(
        "account/sessions.html", page=page, only_active=only_active,
        current_id=current.login_session().id, now=now(), user=user, admin_view=True,
        can_end=can_end,
        event_text=sessions.EVENT_TEXT,
        reason_text={str(k): v for k, v in sessions.REASON_TEXT.items()},
    )


@bp.route("/users/<sub>/sessions/<session_id>/end", methods=["GET", "POST"])
@admin_required
def end_user_session(sub: str, session_id: str):
    user = _own_user(sub)
    view = sessions.get_for_user(user, session_id, now())
    if view is None:
        abort(404)
    try:
        roles.require(g.user, user, action="end_session")
    except roles.Refused as exc:
        return refused(exc)
    back = url_for("admin.user_sessions", sub=sub)
    if view.status is not sessions.Status.ACTIVE:
        db.session.commit()
        flash(f"That session ({describe_target(view)}) had already ended. Nothing to do.", "info")
        return redirect(back, 303)
    form = ActionForm()
    if request.method == "GET" or not form.validate_on_submit():
        db.session.commit()
        return render_template(
            "account/confirm.html", form=form, action="End session",
            title=f"End this session of {user.email}?",
            summary=f"Signs out {describe_target(view)}{revokes_text(view.active_apps)}.",
            back=back,
        )
    try:
        roles.end_session(g.user, view.session, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    flash(f"Ended {user.email}'s session on {describe_target(view)}.", "success")
    if view.session.id == current.login_session().id:
        return redirect(url_for("auth.login"), 303)
    return redirect(back, 303)


@bp.route("/users/<sub>/sessions/end-all", methods=["GET", "POST"])
@admin_required
def end_user_sessions(sub: str):
    user = _own_user(sub)
    back = url_for("admin.user_sessions", sub=sub)
    form = ActionForm()
    if request.method == "GET" or not form.validate_on_submit():
        try:
            roles.require(g.user, user, action="end_sessions")
        except roles.Refused as exc:
            return refused(exc)
        views = active_views(user)
        db.session.commit()
        count = len(views)
        return render_template(
            "account/confirm.html", form=form, action="End all sessions",
            title=f"End all sessions of {user.email}?",
            summary=(f"Signs out {count} session{'s' if count != 1 else ''}"
                     f"{revokes_text(apps_of(views))}."),
            back=back,
        )
    try:
        ended = roles.end_sessions(g.user, user, now=now(), ip=client_ip())
    except roles.Refused as exc:
        return refused(exc)
    db.session.commit()
    flash(f"Ended {len(ended)} session{'s' if len(ended) != 1 else ''} of {user.email}.",
          "success")
    return redirect(back, 303)


@bp.get("/logout-deliveries")
@admin_required
def logout_deliveries():
    """Back-channel logout notices for this account's sessions, with every attempt, and
    the email sent to its users (new-device notices), with where each one stands."""
    rows = db.session.scalars(
        sa.select(LogoutDelivery)
        .join(LoginSession, LoginSession.id == LogoutDelivery.session_id)
        .where(LoginSession.account_id == g.user.account_id)
        .order_by(LogoutDelivery.created_at.desc(), LogoutDelivery.id.desc())
        .limit(100)
    ).all()
    attempts: dict[int, list[LogoutAttempt]] = {}
    if rows:
        for attempt in db.session.scalars(
            sa.select(LogoutAttempt).where(LogoutAttempt.delivery_id.in_([r.id for r in rows]))
            .order_by(LogoutAttempt.at)
        ):
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    mail = db.session.execute(
        sa.select(MailMessage, User.email).join(User, User.id == MailMessage.user_id)
        .where(User.account_id == g.user.account_id)
        .order_by(MailMessage.created_at.desc(), MailMessage.id.desc()).limit(100)).all()
    mail_attempts: dict[int, list[MailAttempt]] = {}
    if mail:
        for attempt in db.session.scalars(
            sa.select(MailAttempt).where(MailAttempt.message_id.in_([m.id for m, _ in mail]))
            .order_by(MailAttempt.at, MailAttempt.id)
        ):
            mail_attempts.setdefault(attempt.message_id, []).append(attempt)
    db.session.commit()
    return render_template("admin/deliveries.html", rows=rows, attempts=attempts, mail=mail,
                           mail_attempts=mail_attempts, now=now())
