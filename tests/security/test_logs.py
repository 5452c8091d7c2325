"""Secrets never reach the logs (OWASP ASVS V7.1.1, V7.1.2; RFC 9700 §4.x "credential
leakage"; RFC 6819 §5.1.4.1.x): during a whole flow on a real server (a failed and a
successful sign-in, consent-free code exchange, code replay, refresh, refresh reuse,
userinfo, the API, introspection, revocation, RP-initiated logout, and a storage
failure whose traceback is logged) every log record of every logger, the provider's,
werkzeug's, Authlib's and SQLAlchemy's at DEBUG, is free of passwords, client
secrets, codes, PKCE verifiers, access/ID/refresh tokens, cookies and CSRF tokens."""

from __future__ import annotations

import logging
import traceback

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.relying_party import Browser, RelyingParty, csrf_token
from tests.security.conftest import ADA, Outage

WRONG_PASSWORD = "Wr0ng-but-Distinctive-Passw0rd"
CLIENT_SIDE = ("httpx", "httpcore")  # the test's own relying party, not the provider


class Collector(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def lines(self) -> list[tuple[str, str]]:
        out = []
        for record in self.records:
            if record.name.startswith(CLIENT_SIDE):
                continue
            text = [record.getMessage(), repr(record.__dict__)]
            if record.exc_info:
                text.append("".join(traceback.format_exception(*record.exc_info)))
            if record.stack_info:
                text.append(record.stack_info)
            out.append((record.name, "\n".join(text)))
        return out


@pytest.fixture
def collector():
    """DEBUG for every logger that does not pin its own level (as ``logging.basicConfig(
    level=DEBUG)`` or ``caplog.set_level(DEBUG)`` would do): werkzeug, Authlib and
    SQLAlchemy inherit it, and the provider's own "idp" loggers are set to DEBUG too."""
    handler = Collector()
    root, idp = logging.getLogger(), logging.getLogger("idp")
    saved = (root.level, idp.level)
    root.setLevel(logging.DEBUG)
    idp.setLevel(logging.DEBUG)
    root.addHandler(handler)
    idp.addHandler(handler)  # "idp" does not propagate to the root logger
    yield handler
    root.removeHandler(handler)
    idp.removeHandler(handler)
    root.setLevel(saved[0])
    idp.setLevel(saved[1])


def secret_parts(value: str) -> list[str]:
    """The whole value, and for ``<id>.<secret>`` values the secret half on its own."""
    parts = [value]
    if value.count(".") == 1:
        parts.append(value.split(".", 1)[1])
    if value.count(".") == 2:
        parts.append(value.rsplit(".", 1)[1])  # a JWT's signature
    return [p for p in parts if len(p) >= 16]


def test_no_secret_appears_in_any_log_line_of_a_full_flow(live_server, make_user, make_client,
                                                          collector):
    make_user(ADA)
    registered = make_client("Photos", post_logout_redirect_uris=["http://127.0.0.1:9999/bye"])
    rp = RelyingParty(live_server.url, registered.client_id, registered.client_secret,
                      registered.redirect_uri)
    browser = Browser(live_server.url)
    secrets: dict[str, str] = {"password": PASSWORD, "wrong password": WRONG_PASSWORD,
                               "client secret": registered.client_secret}

    url, pkce = rp.authorization_url(scope="openid profile email")
    secrets["code verifier"] = pkce["code_verifier"]
    page = browser.go(url, stop_at=rp.redirect_uri)
    secrets["csrf token"] = csrf_token(page.text)
    failed = browser.go(f"{live_server.url}/login", method="POST", data={
        "csrf_token": secrets["csrf token"], "email": ADA, "password": WRONG_PASSWORD})
    assert failed.status_code == 401
    response = browser.login(failed, ADA, PASSWORD, stop_at=rp.redirect_uri)
    code = rp.callback_params(response)["code"]
    secrets["code"] = code
    for cookie in browser.http.cookies.jar:
        secrets[f"cookie {cookie.name}"] = cookie.value

    tokens = rp.exchange(code, pkce["code_verifier"])
    secrets.update({"access token": tokens["access_token"], "id token": tokens["id_token"],
                    "refresh token": tokens["refresh_token"]})
    replay = rp.http.post(rp.metadata["token_endpoint"], auth=(rp.client_id, rp.client_secret),
                          data={"grant_type": "authorization_code", "code": code,
                                "redirect_uri": rp.redirect_uri,
                                "code_verifier": pkce["code_verifier"]})
    assert replay.status_code == 400

    tokens = rp.exchange(*_fresh_code(rp, browser))
    rotated = rp.refresh(tokens["refresh_token"]).json()
    secrets.update({"second access token": tokens["access_token"],
                    "second refresh token": tokens["refresh_token"],
                    "rotated refresh token": rotated["refresh_token"],
                    "rotated access token": rotated["access_token"]})
    assert rp.userinfo(rotated["access_token"]).status_code == 200
    httpx.get(f"{live_server.url}/api/v1/sessions",
              headers={"Authorization": f"Bearer {rotated['access_token']}"})
    assert rp.introspect(rotated["access_token"]).json()["active"] is True
    assert rp.introspect(rotated["refresh_token"], token_type_hint="refresh_token").status_code == 200

    outage = Outage(live_server.app)
    try:
        with outage.at(1, sticky=True):
            failing = rp.refresh(rotated["refresh_token"])
        assert failing.status_code == 503
    finally:
        outage.close()
    reuse = rp.refresh(tokens["refresh_token"])  # rotated already: reuse, family revoked
    assert reuse.status_code == 400
    assert rp.revoke(rotated["refresh_token"]).status_code == 200

    logout = browser.go(f"{live_server.url}/oauth/end-session", method="POST", data={
        "id_token_hint": secrets["id token"], "post_logout_redirect_uri":
        "http://127.0.0.1:9999/bye", "state": "s"}, stop_at="http://127.0.0.1:9999")
    assert logout.status_code in (302, 303)

    lines = collector.lines()
    loggers = {name for name, _ in lines}
    assert {"idp.access", "werkzeug"} <= loggers, loggers  # the capture really sees them
    assert any("unhandled error" in text for _, text in lines)  # the outage was logged
    leaks: dict[tuple[str, str], str] = {}
    for what, value in secrets.items():
        for part in secret_parts(value):
            for name, text in lines:
                if part in text:
                    leaks.setdefault((what, name), text[:120])
    assert not leaks, "\n" + "\n".join(f"{what} in {name}: {text!r}"
                                         for (what, name), text in sorted(leaks.items()))


def _fresh_code(rp: RelyingParty, browser: Browser) -> tuple[str, str]:
    url, pkce = rp.authorization_url(scope="openid profile email")
    response = browser.go(url, stop_at=rp.redirect_uri)
    return rp.callback_params(response)["code"], pkce["code_verifier"]


def test_the_production_access_log_records_paths_without_query_strings(monkeypatch, app):
    """`idp serve` turns gunicorn's own access log off (its default format carries the
    query string: codes, hints, states); the app writes one JSON line per request with
    the path only."""
    import logging

    from gunicorn.app.base import BaseApplication

    from idp import cli

    seen = {}

    def capture(self):
        seen["accesslog"] = self.cfg.accesslog

    monkeypatch.setattr(BaseApplication, "run", capture)
    cli._gunicorn("127.0.0.1", 0, 1, 100)
    assert seen["accesslog"] is None

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logging.getLogger("idp.access").addHandler(handler)
    try:
        app.test_client().get("/authorize?code=SECRETCODE&state=SECRETSTATE")
    finally:
        logging.getLogger("idp.access").removeHandler(handler)
    assert records and records[-1].path == "/authorize"
    assert all("SECRET" not in str(r.__dict__) for r in records)
