"""Shared steps for the security suite: browsers on Flask's test client, a relying
party that runs the authorization code flow (PKCE S256) through the same test client,
and small readers of the database state that attacks must not change.

Everything here talks to the app through HTTP-shaped requests (Flask's test client)
so that what a test asserts is what an attacker would see; the database is read only
to prove that nothing changed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from hypothesis.configuration import set_hypothesis_home_dir

from idp.models import LoginSession, TokenFamily, User, db
from tests.conftest import PASSWORD, RegisteredClient

# Hypothesis keeps caches (constants, examples) in a home directory; keep it out of the work tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "idp-security-hypothesis"))

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
          "(KHTML, like Gecko) Chrome/124.0 Safari/537.36")
ACCEPT_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"  # as browsers send
ADA = "ada@example.com"
BOB = "bob@example.com"
COOKIE = "idp_session"  # the login-session cookie (loopback issuer: no __Host- prefix)
FLASK_COOKIE = "idp"  # Flask's signed cookie (CSRF token, pending authorization)


def csrf_of(page) -> str:
    text = page if isinstance(page, str) else page.get_data(as_text=True)
    match = CSRF.search(text)
    assert match, f"page has no CSRF token: {text[:300]}"
    return match.group(1)


def text_of(response) -> str:
    return response.get_data(as_text=True)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


class Browser:
    """One browser: a cookie jar on Flask's test client that sends a user agent."""

    def __init__(self, app, user_agent: str = CHROME, remote_addr: str = "127.0.0.1"):
        self.app = app
        self.http = app.test_client()
        self.user_agent = user_agent
        self.remote_addr = remote_addr

    def _headers(self, headers: dict | None) -> dict:
        return {"User-Agent": self.user_agent, "Accept": ACCEPT_HTML, **(headers or {})}

    def get(self, url: str, headers: dict | None = None, **kwargs):
        return self.http.get(url, headers=self._headers(headers),
                             environ_base={"REMOTE_ADDR": self.remote_addr}, **kwargs)

    def post(self, url: str, data=None, headers: dict | None = None, **kwargs):
        return self.http.post(url, data=data, headers=self._headers(headers),
                              environ_base={"REMOTE_ADDR": self.remote_addr}, **kwargs)

    def login(self, email: str = ADA, password: str = PASSWORD, *, expect: int | None = 303):
        page = self.get("/login")
        response = self.post("/login", data={"csrf_token": csrf_of(page), "email": email,
                                             "password": password})
        if expect is not None:
            assert response.status_code == expect, text_of(response)[:500]
        return response

    def csrf(self) -> str:
        """A valid CSRF token of this browser, from a page every signed-in user may open."""
        return csrf_of(self.get("/account/sessions/end-others"))

    def cookie(self, name: str = COOKIE) -> str | None:
        cookie = self.http.get_cookie(name)
        return cookie.value if cookie else None

    @property
    def sid(self) -> str:
        """The public id of the session this browser's cookie names (``<id>.<secret>``)."""
        return self.cookie().split(".")[0]


@dataclass
class Grant:
    """What one run of the code flow produced."""

    code: str
    verifier: str | None
    tokens: dict = field(default_factory=dict)
    response: object = None


class Party:
    """A relying party (or resource server) talking to the provider through the test client."""

    def __init__(self, app, registered: RegisteredClient):
        self.app = app
        self.registered = registered
        self.client_id = registered.client_id
        self.secret = registered.client_secret
        self.redirect_uri = registered.redirect_uri
        self.http = app.test_client()

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.client_id, self.secret) if self.secret else None

    def authorize_url(self, *, scope: str = "openid profile email", challenge: str | None = None,
                      **extra) -> str:
        params = {"response_type": "code", "client_id": self.client_id,
                  "redirect_uri": self.redirect_uri, "scope": scope, "state": "st-123",
                  "nonce": secrets.token_urlsafe(12)}
        if challenge:
            params.update(code_challenge=challenge, code_challenge_method="S256")
        params.update(extra)
        params = {k: v for k, v in params.items() if v is not None}
        return "/authorize?" + urlencode(params)

    def code(self, browser: Browser, *, scope: str = "openid profile email", pkce: bool = True,
             **extra) -> Grant:
        """Run the front channel with a signed-in browser (consenting if asked)."""
        verifier, challenge = pkce_pair() if pkce else (None, None)
        url = self.authorize_url(scope=scope, challenge=challenge, **extra)
        response = browser.get(url)
        if response.status_code == 200 and "wants to access your account" in text_of(response):
            response = browser.post(url, data={"csrf_token": csrf_of(response), "allow": "Allow"})
        assert response.status_code in (302, 303), text_of(response)[:500]
        location = response.headers["Location"]
        assert location.startswith(self.redirect_uri + "?"), location
        params = query_of(location)
        assert "code" in params, location
        return Grant(params["code"], verifier, response=response)

    def token(self, data: dict, *, auth: tuple[str, str] | None | bool = True, **kwargs):
        if auth is True:
            auth = self.auth
        if auth is None and "client_id" not in data:
            data = {**data, "client_id": self.client_id}
        return self.http.post("/oauth/token", data=data, auth=auth or None, **kwargs)

    def exchange(self, grant: Grant, **extra):
        data = {"grant_type": "authorization_code", "code": grant.code,
                "redirect_uri": self.redirect_uri}
        if grant.verifier:
            data["code_verifier"] = grant.verifier
        data.update(extra)
        return self.token({k: v for k, v in data.items() if v is not None})

    def tokens(self, browser: Browser, *, scope: str = "openid profile email") -> dict:
        grant = self.code(browser, scope=scope)
        response = self.exchange(grant)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def refresh(self, refresh_token: str):
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def introspect(self, token: str, **extra):
        return self.http.post("/oauth/introspect", data={"token": token, **extra}, auth=self.auth)

    def active(self, token: str) -> bool:
        response = self.introspect(token)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["active"]

    def revoke(self, token: str, **extra):
        return self.http.post("/oauth/revoke", data={"token": token, **extra}, auth=self.auth)

    def userinfo(self, access_token: str):
        return self.http.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"})


# -- storage failures on demand --------------------------------------------------------------


class Outage:
    """Fails the n-th SQL statement sent by the app (or every one from the n-th on) with
    the driver's own OperationalError, as a dropped connection or full disk would."""

    def __init__(self, app):
        with app.app_context():
            self.engine = db.engine
        self.dbapi_error = self.engine.dialect.loaded_dbapi.OperationalError
        self.fail_at: int | None = None
        self.sticky = False
        self.seen = 0
        sa.event.listen(self.engine, "before_cursor_execute", self._before)

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        self.seen += 1
        if self.fail_at is not None and (self.seen == self.fail_at or
                                         (self.sticky and self.seen > self.fail_at)):
            raise self.dbapi_error("simulated outage: could not write to the database")

    @contextlib.contextmanager
    def at(self, n: int | None, *, sticky: bool = False):
        self.fail_at, self.sticky, self.seen = n, sticky, 0
        try:
            yield self
        finally:
            self.fail_at, self.sticky = None, False

    def count(self, call) -> int:
        with self.at(None):
            call()
            return self.seen

    def close(self):
        sa.event.remove(self.engine, "before_cursor_execute", self._before)


# -- database readers --------------------------------------------------------------------------


def read(app, fn: Callable):
    """Run ``fn()`` in a fresh app context and session; return its (plain) result."""
    with app.app_context():
        try:
            return fn()
        finally:
            db.session.remove()


def session_state(app, session_id: str) -> tuple:
    def get():
        row = db.session.get(LoginSession, session_id)
        return (row.ended_at, row.end_reason) if row else None

    return read(app, get)


def user_id_of(app, email: str) -> int:
    return read(app, lambda: db.session.scalar(sa.select(User.id).where(User.email == email)))


def sub_of(app, email: str) -> str:
    return read(app, lambda: db.session.scalar(sa.select(User.sub).where(User.email == email)))


def active_session_ids(app, email: str) -> list[str]:
    def get():
        return list(db.session.scalars(
            sa.select(LoginSession.id).join(User, User.id == LoginSession.user_id)
            .where(User.email == email, LoginSession.ended_at.is_(None))
            .order_by(LoginSession.created_at, LoginSession.id)))

    return read(app, get)


def families_revoked(app) -> dict[str, str | None]:
    return read(app, lambda: {f.id: f.revoke_reason for f in db.session.scalars(
        sa.select(TokenFamily))})


def audit_events(app, event: str) -> list:
    from idp.models import AuditEvent

    def get():
        rows = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == event)
                                  .order_by(AuditEvent.id)).all()
        for row in rows:
            db.session.expunge(row)
        return rows

    return read(app, get)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def ada(make_user):
    return make_user(ADA)


@pytest.fixture
def browser(app):
    def make(user_agent: str = CHROME, remote_addr: str = "127.0.0.1") -> Browser:
        return Browser(app, user_agent, remote_addr)

    return make


@pytest.fixture
def signed_in(app):
    def make(email: str = ADA, user_agent: str = CHROME) -> Browser:
        browser = Browser(app, user_agent)
        browser.login(email)
        return browser

    return make


@pytest.fixture
def party(app, make_client):
    def make(name: str = "Photos", **kwargs) -> Party:
        return Party(app, make_client(name, **kwargs))

    return make
