"""Forms (Flask-WTF): every state-changing form carries a CSRF token."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    submit = SubmitField("Sign in")


class ConsentForm(FlaskForm):
    decision = HiddenField()
    allow = SubmitField("Allow")
    deny = SubmitField("Deny")


class ActionForm(FlaskForm):
    """A button that changes state: logout, end a session."""

    submit = SubmitField("Confirm")


class ConfirmLogoutForm(FlaskForm):
    confirm = SubmitField("Sign out")


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=1024)])
    new = PasswordField("New password", validators=[DataRequired(), Length(max=1024)])
    confirm = PasswordField("New password again", validators=[DataRequired(), Length(max=1024)])
    submit = SubmitField("Change password")


class NewPasswordForm(FlaskForm):
    """A new password without the current one (after "This wasn't me")."""

    new = PasswordField("New password", validators=[DataRequired(), Length(max=1024)])
    confirm = PasswordField("New password again", validators=[DataRequired(), Length(max=1024)])
    submit = SubmitField("End all sessions and set this password")


class ForgotForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    submit = SubmitField("Send me a link")


class CodeForm(FlaskForm):
    """A second factor: a 6-digit code, or a recovery code (``abcd-efgh-ij``)."""

    code = StringField("Code", validators=[DataRequired(), Length(max=20)])
    submit = SubmitField("Continue")


class ReauthenticateForm(FlaskForm):
    """Confirm it is you: the password, and a code when a second factor is asked for."""

    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    code = StringField("Code", validators=[Length(max=20)])
    submit = SubmitField("Confirm")


class PasskeyForm(FlaskForm):
    """A passkey's answer (``static/passkey.js`` fills ``credential``), named when new."""

    credential = HiddenField(validators=[DataRequired(), Length(max=64 * 1024)])
    label = StringField("Name", validators=[Length(max=80)])
    submit = SubmitField("Continue")
