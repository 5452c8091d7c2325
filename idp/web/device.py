"""Approving a device login (RFC 8628) in the browser: the user types the code the
command-line tool shows, sees which app asks for what, and approves or denies.
Approval opens a session of its own, kind "device", under the account's policy."""

from __future__ import annotations

import re

import sqlalchemy as sa
from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from .. import sessions
from ..counters import Limited
from ..models import DeviceCode, db
from ..oauth import scopes
from ..runtime import client_ip, now, services
from . import current
from .account import login_required
from .forms import ActionForm

bp = Blueprint("device", __name__, url_prefix="/device")

def normalise(code: str) -> str:
    """Users type codes loosely: 'bcdf ghjk' and 'BCDFGHJK' both mean 'BCDF-GHJK'."""
    letters = re.sub(r"[^A-Za-z]", "", code or "").upper()[:8]
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else ""


def _pending(code: str) -> DeviceCode | None:
    """The device login waiting for this code. Every lookup counts against the signed-in
    user's and the IP's wrong-code limits until it turns out right (RFC 8628 §5.1: user
    codes are short, guessing must be limited); past either, 429 (``counters.Limited``)."""
    limits = services().limits
    limits.reserve("USER_CODE_FAILURES_PER_USER", g.user.sub)
    try:
        limits.reserve("USER_CODE_FAILURES_PER_IP", client_ip())
    except Limited:
        limits.release("USER_CODE_FAILURES_PER_USER", g.user.sub)
        raise
    row = db.session.scalar(sa.select(DeviceCode).where(DeviceCode.user_code == normalise(code)))
    if row is None or row.approved is not None or row.expires_at <= now():
        return None
    limits.release("USER_CODE_FAILURES_PER_USER", g.user.sub)
    limits.release("USER_CODE_FAILURES_PER_IP", client_ip())
    return row


@bp.route("", methods=["GET", "POST"])
@login_required
def enter():
    form = ActionForm()
    code = request.values.get("user_code", "")
    if code and (request.method == "GET" or form.validate_on_submit()):
        row = _pending(code)
        if row is None:
            db.session.commit()
            return render_template("device/enter.html", form=form, code=code,
                                   error="That code is not valid or has expired. Check the code "
                                         "your device shows, or start again on the device."), 400
        db.session.commit()
        return render_template(
            "device/confirm.html", form=ActionForm(), row=row,
            scopes=[text for _, text in scopes.described(scopes.approvable(row.scope, g.user))],
            location=services().locator.locate(row.ip),
        )
    db.session.commit()
    return render_template("device/enter.html", form=form, code=code, error=None)


@bp.post("/decide")
@login_required
def decide():
    form = ActionForm()
    row = _pending(request.form.get("user_code", "")) if form.validate_on_submit() else None
    if row is None:
        db.session.commit()
        flash("That device code is no longer waiting for approval.", "info")
        return redirect(url_for("device.enter"), 303)
    row.user_id = g.user.id
    row.decided_at = now()
    if request.form.get("decision") != "approve":
        row.approved = False
        db.session.commit()
        flash(f"Denied. {row.client.name} was not signed in.", "info")
        return redirect(url_for("account.sessions_page"), 303)
    origin = sessions.Origin(
        ip=row.ip, user_agent=row.user_agent, device_label=row.client.name,
        device_type="other", location=services().locator.locate(row.ip),
    )
    try:
        started = sessions.start(g.user, origin, now=now(), approved_by=current.login_session(),
                                 kind="device", amr=("pwd",))
    except sessions.CredentialsChanged:
        db.session.rollback()
        flash("This session ended while you were approving: sign in again, then approve the "
              "device.", "info")
        return redirect(url_for("auth.login"), 303)
    except sessions.SessionLimitReached:
        db.session.rollback()
        flash("You already have as many active sessions as your organisation allows. "
              "End one, then approve the device again.", "info")
        return redirect(url_for("account.sessions_page", view="active"), 303)
    row.approved = True
    row.scope = scopes.approvable(row.scope, g.user)  # what the device page showed
    row.session_id = started.session.id
    db.session.commit()
    flash(f"Approved. {row.client.name} is signed in; it appears in your sessions and you "
          "can end it there.", "success")
    return redirect(url_for("account.sessions_page"), 303)
