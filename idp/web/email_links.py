"""Pages the links in the provider's email open, without being signed in: "This wasn't me"
from a new-device notice (``not_me``), a password reset (``resets``), and the verification
of an address (``verification``).

The link's GET shows what it will do and asks for one click: mail scanners and link
previews fetch links by themselves, and a GET must never end a session for them.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from .. import credentials, links, not_me, resets, verification
from ..models import db
from ..runtime import client_ip, now, services
from .forms import ActionForm, NewPasswordForm

bp = Blueprint("email_links", __name__)

REFUSED = ("This link has expired or was already used. If you still don't recognise a "
           "sign-in, sign in and end it from your sessions page, or ask your administrator.")


def _refused():
    db.session.commit()
    return render_template("not_me.html", step="refused", message=REFUSED), 404


@bp.route("/not-me/<token>", methods=["GET", "POST"])
def not_me_page(token: str):
    form = ActionForm()
    try:
        if not form.validate_on_submit():
            view = not_me.look(token, now=now())
            db.session.commit()
            return render_template("not_me.html", step="confirm", view=view, form=form)
        report = not_me.report(token, now=now(), ip=client_ip())
    except not_me.LinkRefused:
        return _refused()
    db.session.commit()
    return render_template("not_me.html", step="reported", view=report.view,
                           ended_now=report.ended_now, token=token,
                           form=NewPasswordForm(formdata=None))


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    form = NewPasswordForm()
    error = None
    try:
        if form.validate_on_submit():
            try:
                ended = resets.complete(token, new=form.new.data, confirm=form.confirm.data,
                                        hasher=services().passwords, now=now(), ip=client_ip())
            except credentials.PasswordChangeRefused as refused:
                db.session.rollback()
                error = str(refused)
            else:
                db.session.commit()
                return render_template("reset.html", step="done", ended=len(ended))
        elif form.is_submitted():
            error = "Enter the new password twice."
        user = resets.user_of(token, now=now())
    except links.LinkRefused:
        db.session.commit()
        return render_template("reset.html", step="refused"), 404
    db.session.commit()
    return render_template("reset.html", step="form", user=user, form=form,
                           error=error), 400 if error else 200


@bp.route("/verify/<token>", methods=["GET", "POST"])
def verify_email(token: str):
    form = ActionForm()
    try:
        if form.validate_on_submit():
            user = verification.confirm(token, now=now(), ip=client_ip())
            db.session.commit()
            return render_template("verify.html", step="done", user=user)
        user = verification.look(token, now=now())
    except links.LinkRefused:
        db.session.rollback()
        return render_template("verify.html", step="refused"), 404
    db.session.commit()
    return render_template("verify.html", step="confirm", user=user, form=form)


@bp.post("/not-me/<token>/secure")
def secure_account(token: str):
    form = NewPasswordForm()
    error = None
    if form.validate_on_submit():
        try:
            ended = not_me.secure(token, new=form.new.data, confirm=form.confirm.data,
                                  hasher=services().passwords, now=now(), ip=client_ip())
        except not_me.LinkRefused:
            return _refused()
        except credentials.PasswordChangeRefused as refused:
            error = str(refused)
        else:
            db.session.commit()
            return render_template("not_me.html", step="secured", ended=len(ended))
    try:
        view = not_me.reported_view(token, now=now())
    except not_me.LinkRefused:
        return _refused()
    db.session.commit()
    return render_template("not_me.html", step="reported", view=view, ended_now=False,
                           token=token, form=form, error=error or "Enter the new password twice."), 400
