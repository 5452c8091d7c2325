"""The operator's recovery path: `idp disable-user`, `idp enable-user`, `idp set-role`.

Not bound by the role ordering (the operator is above every account), but bound by the
owner rule: an account's last enabled owner is disabled or demoted only with --force,
and the audit says so. Disabling ends the user's sessions as the admin page does (the
same ``roles.disable``): tokens revoked, back-channel logout notices sent, audited with
the operator as the actor. In-process on both databases (``cli.main`` on the test's app
and clock), and once through the real console script.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import sqlalchemy as sa

from idp import accounts, sessions, tokens
from idp.models import AuditEvent, Client, LoginSession, LogoutDelivery, TokenFamily, User, db
from tests.compact import claims_of
from tests.flows import start_session
from tests.test_cli import assert_one_line_error, home, idp, one_json_object, template  # noqa: F401
from tests.web.test_admin_api import run_cli

OWNER, SECOND, ADMIN, MEMBER = ("olive@acme.test", "otto@acme.test", "adam@acme.test",
                                "mia@acme.test")


def ok(result: tuple[int, str, str]) -> dict:
    code, out, err = result
    assert code == 0, err
    assert out.count("\n") == 1, out
    return json.loads(out)


def one_line_error(result: tuple[int, str, str], code: int, *needles: str) -> str:
    got, out, err = result
    assert got == code and out == "", (got, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("idp: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def acme(make_account, make_user) -> dict[str, str]:
    account = make_account("acme")
    return {email: make_user(email, account_id=account, role=role) for email, role in (
        (OWNER, "owner"), (SECOND, "owner"), (ADMIN, "admin"), (MEMBER, "member"))}


def user_row(app, email: str) -> tuple:
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        return user.role, user.disabled_at, user.credentials_version


def audit(app, event: str) -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.event == event)
                                  .order_by(AuditEvent.id)).all()
        db.session.expunge_all()
        return rows


class Receiver(BaseHTTPRequestHandler):
    tokens: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        type(self).tokens.append(parse_qs(body)["logout_token"][0])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def receiver():
    handler = type("Handler", (Receiver,), {"tokens": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/logout", handler.tokens
    server.shutdown()
    thread.join(5)


def test_disable_user_ends_sessions_like_the_admin_page_and_names_the_operator(
        app, clock, acme, receiver, monkeypatch, capsys):
    uri, received = receiver
    with app.app_context():
        client, _ = accounts.create_client(name="Photos", redirect_uris=["https://p.example/cb"],
                                           backchannel_logout_uri=uri, now=clock.now())
        mia = db.session.scalar(sa.select(User).where(User.email == MEMBER))
        ids = []
        for _ in range(2):
            session = start_session(mia, sessions.Origin(ip="198.51.100.7"),
                                    now=clock.now()).session
            tokens.start_family(session=session, client=client, scope="openid", now=clock.now())
            ids.append(session.id)
        db.session.commit()
        client_id = client.client_id

    body = ok(run_cli(monkeypatch, capsys, app, "disable-user", "--email", "Mia@Acme.test",
                      "--json"))
    assert body == {"email": MEMBER, "sub": acme[MEMBER], "account": "acme", "role": "member",
                    "disabled": True, "changed": True, "sessions_ended": 2}
    with app.app_context():
        rows = {s.id: s for s in db.session.scalars(sa.select(LoginSession))}
        assert {rows[i].end_reason for i in ids} == {"disabled"}
        assert all(f.revoked_at is not None for f in db.session.scalars(sa.select(TokenFamily)))
        deliveries = db.session.scalars(sa.select(LogoutDelivery)).all()
        assert {d.session_id for d in deliveries} == set(ids)
        assert all(d.delivered_at is not None for d in deliveries)
    # The relying party got one logout token per session, for mia.
    claims = [claims_of(t) for t in received]
    assert sorted(c["sid"] for c in claims) == sorted(ids)
    assert {c["sub"] for c in claims} == {acme[MEMBER]} and {c["aud"] for c in claims} == {
        client_id}
    [event] = audit(app, "user.disabled")
    assert event.actor == "operator:cli" and event.detail == {"sessions_ended": 2}
    assert {e.actor for e in audit(app, "session.ended")} == {"operator:cli"}

    # Again: nothing to do, and it says so.
    again = ok(run_cli(monkeypatch, capsys, app, "disable-user", "--email", MEMBER, "--json"))
    assert again["changed"] is False and again["sessions_ended"] == 0
    assert len(audit(app, "user.disabled")) == 1
    code, out, _ = run_cli(monkeypatch, capsys, app, "enable-user", "--email", MEMBER)
    assert code == 0 and out.strip() == "mia@acme.test (acme) can sign in again."
    assert user_row(app, MEMBER)[1] is None
    assert audit(app, "user.enabled")[0].actor == "operator:cli"
    with app.app_context():
        assert db.session.get(Client, client_id) is not None


def test_the_operator_undoes_what_an_admin_may_not_do_and_is_not_bound_by_the_ordering(
        app, clock, acme, monkeypatch, capsys):
    """An owner disabled: no admin may enable an owner (nor make anyone owner); the
    operator can, and can give any role."""
    ok(run_cli(monkeypatch, capsys, app, "disable-user", "--email", SECOND, "--json"))
    body = ok(run_cli(monkeypatch, capsys, app, "enable-user", "--email", SECOND, "--json"))
    assert body["disabled"] is False and body["changed"] is True and body["role"] == "owner"
    body = ok(run_cli(monkeypatch, capsys, app, "set-role", "--email", MEMBER, "--role",
                      "owner", "--json"))
    assert body == {"email": MEMBER, "sub": acme[MEMBER], "account": "acme", "role": "owner",
                    "previous_role": "member", "disabled": False, "changed": True}
    [event] = audit(app, "user.role_changed")
    assert event.actor == "operator:cli"
    assert event.detail == {"previous": "member", "role": "owner"}
    code, out, _ = run_cli(monkeypatch, capsys, app, "set-role", "--email", MEMBER, "--role",
                           "owner")
    assert code == 0 and out.strip() == "mia@acme.test is already owner in acme; nothing changed."
    assert len(audit(app, "user.role_changed")) == 1


def test_the_last_enabled_owner_needs_force_and_the_audit_says_it_was_forced(
        app, clock, acme, monkeypatch, capsys):
    ok(run_cli(monkeypatch, capsys, app, "set-role", "--email", SECOND, "--role", "admin",
               "--json"))
    before = user_row(app, OWNER)
    one_line_error(run_cli(monkeypatch, capsys, app, "set-role", "--email", OWNER, "--role",
                           "admin", "--json"), 1,
                   "olive@acme.test is the last enabled owner of acme",
                   "idp set-role --email OTHER --role owner", "--force")
    one_line_error(run_cli(monkeypatch, capsys, app, "disable-user", "--email", OWNER),
                   1, "last enabled owner", "idp disable-user --email olive@acme.test --force")
    assert user_row(app, OWNER) == before
    assert audit(app, "user.disabled") == []

    body = ok(run_cli(monkeypatch, capsys, app, "disable-user", "--email", OWNER, "--force",
                      "--json"))
    assert body["disabled"] is True and body["changed"] is True
    [override] = audit(app, "account.owner_rule_overridden")
    assert override.actor == "operator:cli" and override.detail == {"action": "disable"}
    # With no enabled owner left, other changes are not held up by the rule...
    ok(run_cli(monkeypatch, capsys, app, "set-role", "--email", MEMBER, "--role", "admin",
               "--json"))
    # ...and re-enabling the owner restores one.
    ok(run_cli(monkeypatch, capsys, app, "enable-user", "--email", OWNER, "--json"))
    body = ok(run_cli(monkeypatch, capsys, app, "set-role", "--email", OWNER, "--role",
                      "member", "--force", "--json"))
    assert body["role"] == "member"
    forced = [e for e in audit(app, "user.role_changed") if e.detail.get("forced")]
    assert [e.detail for e in forced] == [{"previous": "owner", "role": "member",
                                           "forced": True}]


def test_unknown_users_and_bad_roles_fail_with_one_line(app, acme, monkeypatch, capsys):
    for command in (["disable-user"], ["enable-user"], ["set-role", "--role", "admin"]):
        one_line_error(run_cli(monkeypatch, capsys, app, *command, "--email",
                               "nobody@acme.test", "--json"), 1,
                       "no user has the email 'nobody@acme.test'", "idp create-user")
    one_line_error(run_cli(monkeypatch, capsys, app, "set-role", "--email", MEMBER, "--role",
                           "root"), 2, "--role", "idp set-role --help")
    one_line_error(run_cli(monkeypatch, capsys, app, "disable-user"), 2, "--email")
    assert user_row(app, MEMBER)[0] == "member"


def test_the_console_script_recovers_an_owner(home):  # noqa: F811 - tests.test_cli's fixture
    """Through the installed `idp`: one JSON object on stdout, one line on stderr."""
    one_json_object(idp(home, "create-account", "acme", "--json"))
    for email, role in ((OWNER, "owner"), (ADMIN, "admin")):
        one_json_object(idp(home, "create-user", "--account", "acme", "--email", email,
                            "--role", role, "--password-stdin", "--verified", "--json",
                            stdin="a long password\n"))
    assert_one_line_error(idp(home, "disable-user", "--email", OWNER, "--json"), 1,
                          "last enabled owner of acme", "--force")
    assert one_json_object(idp(home, "set-role", "--email", ADMIN, "--role", "owner",
                               "--json"))["previous_role"] == "admin"
    assert one_json_object(idp(home, "disable-user", "--email", OWNER, "--json"))["disabled"]
    enabled = one_json_object(idp(home, "enable-user", "--email", OWNER, "--json"))
    assert enabled["changed"] is True and enabled["disabled"] is False
    assert enabled["role"] == "owner" and enabled["account"] == "acme"
