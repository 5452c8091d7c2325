"""Limits that stop attackers and never users: device-authorization floods and user-code
guessing (RFC 8628 §5.1) answer 429 with Retry-After, per IP and per client or user;
purged sessions take their logout deliveries with them; a flood of junk requests claiming
a relying party's public client id never refuses that relying party."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from idp import create_app, sessions
from idp.models import LogoutAttempt, LogoutDelivery, db
from tests.security.conftest import ADA, Browser, read


@pytest.fixture
def limited(settings, clock, backend):
    app = create_app({**settings, "DEVICE_AUTHORIZATIONS_PER_IP": "3 per minute",
                      "DEVICE_AUTHORIZATIONS_PER_CLIENT": "5 per minute",
                      "USER_CODE_FAILURES_PER_USER": "4 per 10 minutes",
                      "USER_CODE_FAILURES_PER_IP": "6 per 10 minutes"}, clock=clock)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def cli(make_client):
    return make_client("acme-cli", public=True, device=True)


def authorize(app, client_id: str, ip: str):
    return app.test_client().post("/oauth/device", data={"client_id": client_id,
                                                         "scope": "openid"},
                                  environ_base={"REMOTE_ADDR": ip})


def test_a_device_authorization_flood_is_limited_per_ip_and_per_client(limited, cli):
    from_one_ip = [authorize(limited, cli.client_id, "198.51.100.1") for _ in range(4)]
    assert [r.status_code for r in from_one_ip] == [200, 200, 200, 429]
    refused = from_one_ip[-1]
    assert refused.get_json()["error"] == "slow_down" and int(refused.headers["Retry-After"]) > 0
    # Spread over IPs, the client's own limit holds: two more, then 429.
    others = [authorize(limited, cli.client_id, f"198.51.100.{i}").status_code
              for i in range(2, 6)]
    assert others == [200, 200, 429, 429]
    metrics = limited.test_client().get("/metrics").get_data(as_text=True)
    for name in ("DEVICE_AUTHORIZATIONS_PER_IP", "DEVICE_AUTHORIZATIONS_PER_CLIENT"):
        assert f'idp_limit_refusals_total{{limit="{name}"}}' in metrics, name


def test_guessing_user_codes_is_limited_per_user_and_per_ip(limited, ada, cli):
    real = authorize(limited, cli.client_id, "203.0.113.5").get_json()["user_code"]
    guesser = Browser(limited, remote_addr="198.51.100.9")
    guesser.login(ADA)
    statuses = [guesser.get(f"/device?user_code=BCDF-GH{c}{c}").status_code for c in "JKLMN"]
    assert statuses == [400, 400, 400, 400, 429]
    refused = guesser.get(f"/device?user_code={real}")  # even the right code, for now
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    # Another user on the same IP has a budget of their own, until the IP's runs out.
    other = Browser(limited, remote_addr="198.51.100.9")
    other.login("bob@example.com")
    assert other.get(f"/device?user_code={real}").status_code == 200  # right: given back
    assert [other.get("/device?user_code=BCDF-GHPP").status_code for _ in range(3)] == \
        [400, 400, 429]


@pytest.fixture
def bob(make_user):
    return make_user("bob@example.com")


@pytest.fixture(autouse=True)
def _users(ada, bob):
    return ada, bob


def test_purged_sessions_leave_no_logout_deliveries(app, clock, make_client):
    rp = make_client("Photos")
    browser = Browser(app)
    browser.login(ADA)
    sid = browser.sid

    def add_delivery():
        delivery = LogoutDelivery(session_id=sid, client_id=rp.client_id, subject="s",
                                  uri="https://rp.example/bc", created_at=clock.now(),
                                  next_attempt_at=clock.now(), attempts=1)
        db.session.add(delivery)
        db.session.flush()
        db.session.add(LogoutAttempt(delivery_id=delivery.id, at=clock.now(), status=None,
                                     error="timeout", duration_ms=2000))
        db.session.commit()

    def rows() -> tuple[int, int]:
        return tuple(db.session.scalar(sa.select(sa.func.count()).select_from(model))
                     for model in (LogoutDelivery, LogoutAttempt))

    read(app, add_delivery)
    assert read(app, rows) == (1, 1)

    def purge():
        purged = sessions.purge([sid])
        db.session.commit()
        return purged

    assert read(app, purge) == 1
    assert read(app, rows) == (0, 0)
