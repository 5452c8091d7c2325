"""Operations surface: probes, Prometheus metrics, what they report."""

from __future__ import annotations

import pytest

from idp import create_app
from tests.conftest import redis_up
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty


def test_healthz_and_readyz_answer_without_a_session_or_rate_limit(client):
    for _ in range(50):
        assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"status": "ready", "database": "ok", "keys": "ok"}


def test_readyz_shows_redis_but_stays_ready_when_it_is_down(settings, clock):
    app = create_app({**settings, "REDIS_URL": "redis://127.0.0.1:1/0"}, clock=clock)
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 200
    assert answer.json["redis"].startswith("unreachable")
    assert app.config["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:1/0"


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_readyz_reports_a_reachable_redis(settings, clock):
    app = create_app({**settings, "REDIS_URL": "redis://127.0.0.1:6379/15"}, clock=clock)
    assert app.test_client().get("/readyz").json["redis"] == "ok"


def test_metrics_count_requests_tokens_and_session_events(live_server, make_user, make_client):
    make_user("ada@example.com")
    client = make_client("Photos")
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    tokens = obtain_tokens(rp, Browser(live_server.url))
    assert rp.refresh(tokens["refresh_token"]).status_code == 200
    assert rp.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"  # reuse
    text = rp.http.get(f"{live_server.url}/metrics").text
    assert 'idp_http_requests_total{endpoint="oidc.token",method="POST",status="200"}' in text
    assert 'idp_http_request_seconds_bucket{endpoint="oidc.token"' in text
    assert 'idp_token_responses_total{grant_type="refresh_token",outcome="issued"}' in text
    assert 'idp_token_responses_total{grant_type="refresh_token",outcome="invalid_grant"}' in text
    assert 'idp_events_total{event="session.started"' in text
    assert "idp_backchannel_pending 0" in text and "idp_backchannel_given_up 0" in text
    assert tokens["refresh_token"] not in text and tokens["access_token"] not in text


def test_request_labels_are_bounded_whatever_the_client_sends(client):
    """A made-up method is counted as ``other`` and a made-up path as ``unmatched``: a
    client sending FOO1, FOO2, … or random paths adds no series."""
    assert client.open("/healthz", method="FOO1").status_code == 405
    assert client.open("/healthz", method="FOO2").status_code == 405
    assert client.get("/no-such-page-1234").status_code == 404
    assert client.options("/healthz").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'idp_http_requests_total{endpoint="unmatched",method="other",status="405"}' in text
    assert 'idp_http_requests_total{endpoint="unmatched",method="GET",status="404"}' in text
    assert 'idp_http_requests_total{endpoint="ops.healthz",method="OPTIONS",status="200"}' in text
    assert "FOO1" not in text and "FOO2" not in text and "no-such-page" not in text
