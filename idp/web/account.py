"""The signed-in user's own pages."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, url_for

from ..models import db
from ..runtime import now
from . import current
from .forms import ActionForm

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.get("")
def index():
    live = current.login_session()
    db.session.commit()
    if live is None:
        return redirect(url_for("auth.login"), 303)
    return render_template(
        "account/index.html", user=live.user, session=live, now=now(), logout_form=ActionForm()
    )
