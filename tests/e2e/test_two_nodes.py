"""Two provider nodes on one database behave as one: nothing that matters lives in a node."""

from __future__ import annotations

import threading

import httpx
import pytest
from werkzeug.serving import make_server

from idp import create_app
from idp.models import db
from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty

pytestmark = pytest.mark.e2e


@pytest.fixture
def node_b(live_server, settings, clock):
    """A second server on the same database and keys, with its own app and process state."""
    app = create_app({**settings, "ISSUER": live_server.url, "KEYS_RELOAD_INTERVAL": 0},
                     clock=clock)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    thread.join(timeout=5)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_session_ended_on_one_node_is_inactive_on_the_other_at_once(
        live_server, node_b, make_user, make_client):
    make_user("ada@example.com")
    client = make_client("Photos", scope="openid sessions")
    url_b, _ = node_b
    rp_a = RelyingParty(live_server.url, client.client_id, client.client_secret,
                        client.redirect_uri)
    tokens = obtain_tokens(rp_a, Browser(live_server.url), scope="openid sessions")
    # Refresh through node B: same database, same keys.
    refreshed = httpx.post(f"{url_b}/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client.client_id, client.client_secret))
    assert refreshed.status_code == 200, refreshed.text
    tokens = refreshed.json()
    assert rp_a.introspect(tokens["access_token"]).json()["active"] is True
    # End the session through node B's API; node A knows at once.
    ended = httpx.delete(f"{url_b}/api/v1/sessions", params={"scope": "all"},
                         headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert ended.status_code == 200 and ended.json()["ended"] == 1
    assert rp_a.introspect(tokens["access_token"]).json() == {"active": False}
    assert rp_a.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert rp_a.userinfo(tokens["access_token"]).status_code == 401


def test_keys_rotated_on_one_node_are_published_and_accepted_by_the_other(
        live_server, node_b, make_user, make_client):
    url_b, app_b = node_b
    before = {k["kid"] for k in httpx.get(f"{url_b}/.well-known/jwks.json").json()["keys"]}
    services = live_server.app.extensions["idp"]
    # Rotated one signing delay ago (the relying party's clock is the wall's): the new
    # keys were published first and sign from now.
    new = services.keys.rotate(services.clock.now() - services.keys.signing_delay)
    after = {k["kid"] for k in httpx.get(f"{url_b}/.well-known/jwks.json").json()["keys"]}
    assert {k.kid for k in new} <= after and before <= after
    # A token signed by node A's new key is good at node B.
    make_user("ada@example.com")
    client = make_client("Photos")
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret,
                      client.redirect_uri)
    tokens = obtain_tokens(rp, Browser(live_server.url))
    header, _ = rp.verify_access_token(tokens["access_token"])
    assert header["kid"] in {k.kid for k in new}
    assert httpx.get(f"{url_b}/userinfo", headers={
        "Authorization": f"Bearer {tokens['access_token']}"}).status_code == 200
