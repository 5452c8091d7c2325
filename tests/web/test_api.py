"""The sessions JSON API, over real HTTP, checked against its OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.flows import obtain_tokens
from tests.relying_party import Browser, RelyingParty

OPENAPI = json.loads((Path(__file__).resolve().parents[2] / "idp" / "openapi.json").read_text())
PHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
         "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")


def conforms(body: dict, schema_name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": OPENAPI["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def documented(method: str, path: str, status: int) -> str:
    """The schema name the document promises for this response."""
    operation = OPENAPI["paths"][path][method]
    ref = operation["responses"][str(status)]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


@pytest.fixture
def setup(live_server, make_user, make_client):
    make_user("ada@example.com")
    make_user("bob@example.com")
    client = make_client("Scripts", scope="openid email sessions")
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret,
                      client.redirect_uri)
    return live_server, rp


def api(live_server, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{live_server.url}/api/v1", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})


def test_lists_sessions_with_current_flag_and_matches_the_document(setup):
    live_server, rp = setup
    laptop = obtain_tokens(rp, Browser(live_server.url), scope="openid sessions")
    phone_browser = Browser(live_server.url, user_agent=PHONE)
    obtain_tokens(rp, phone_browser, scope="openid sessions")
    with api(live_server, laptop["access_token"]) as http:
        response = http.get("/sessions")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        conforms(body, documented("get", "/sessions", 200))
        assert len(body["sessions"]) == 2
        current = [s for s in body["sessions"] if s["current"]]
        assert len(current) == 1 and current[0]["device"]["label"] == "Chrome on macOS"
        claims = rp.verify_access_token(laptop["access_token"])[1]
        assert current[0]["id"] == claims["sid"]
        phone = next(s for s in body["sessions"] if not s["current"])
        assert phone["device"] == {"label": "Safari on iPhone", "type": "mobile"}
        assert phone["apps"][0]["name"] == "Scripts"

        one = http.get(f"/sessions/{phone['id']}")
        conforms(one.json(), documented("get", "/sessions/{id}", 200))
        assert one.json()["events"][0]["event"] == "session.started"

        ended = http.delete(f"/sessions/{phone['id']}")
        conforms(ended.json(), documented("delete", "/sessions/{id}", 200))
        assert ended.json()["ended"] is True
        assert ended.json()["session"]["status"] == "ended"
        assert ended.json()["session"]["end_reason_text"] == "Ended by you"
        again = http.delete(f"/sessions/{phone['id']}")
        assert again.status_code == 200 and again.json()["ended"] is False

        active = http.get("/sessions", params={"status": "active"}).json()
        assert [s["id"] for s in active["sessions"]] == [current[0]["id"]]


def test_someone_elses_session_is_not_found(setup):
    live_server, rp = setup
    ada = obtain_tokens(rp, Browser(live_server.url), scope="openid sessions")
    bob = obtain_tokens(rp, Browser(live_server.url), "bob@example.com", scope="openid sessions")
    bob_sid = rp.verify_access_token(bob["access_token"])[1]["sid"]
    with api(live_server, ada["access_token"]) as http:
        for response in (http.get(f"/sessions/{bob_sid}"), http.delete(f"/sessions/{bob_sid}"),
                         http.get("/sessions/does-not-exist")):
            assert response.status_code == 404
            conforms(response.json(), "Error")
            assert response.json()["error"] == "not_found"
    assert rp.introspect(bob["access_token"]).json()["active"] is True


def test_scope_and_token_are_enforced(setup):
    live_server, rp = setup
    plain = obtain_tokens(rp, Browser(live_server.url), scope="openid email")
    with api(live_server, plain["access_token"]) as http:
        response = http.get("/sessions")
        assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"
        conforms(response.json(), "Error")
    missing = httpx.get(f"{live_server.url}/api/v1/sessions")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    conforms(missing.json(), "Error")
    bad = httpx.get(f"{live_server.url}/api/v1/sessions", headers={"Authorization": "Bearer x.y.z"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"


def test_end_others_keeps_the_current_session_and_end_all_ends_it(setup):
    live_server, rp = setup
    first = obtain_tokens(rp, Browser(live_server.url), scope="openid sessions")
    second = obtain_tokens(rp, Browser(live_server.url), scope="openid sessions")
    third = obtain_tokens(rp, Browser(live_server.url), scope="openid sessions")
    with api(live_server, first["access_token"]) as http:
        bad = http.delete("/sessions")
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
        others = http.delete("/sessions", params={"scope": "others"})
        conforms(others.json(), documented("delete", "/sessions", 200))
        assert others.json()["ended"] == 2
        assert rp.refresh(second["refresh_token"]).json()["error"] == "invalid_grant"
        assert rp.introspect(third["access_token"]).json() == {"active": False}
        assert http.get("/sessions").status_code == 200
        assert http.delete("/sessions", params={"scope": "all"}).json()["ended"] == 1
        assert http.get("/sessions").status_code == 401


def test_pagination_with_cursor_and_bad_parameters(setup):
    live_server, rp = setup
    tokens = [obtain_tokens(rp, Browser(live_server.url), scope="openid sessions")
              for _ in range(3)]
    with api(live_server, tokens[0]["access_token"]) as http:
        first = http.get("/sessions", params={"limit": 2}).json()
        assert len(first["sessions"]) == 2 and first["next_cursor"]
        rest = http.get("/sessions", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert len(rest["sessions"]) == 1 and rest["next_cursor"] is None
        ids = [s["id"] for s in first["sessions"] + rest["sessions"]]
        assert len(set(ids)) == 3
        assert http.get("/sessions", params={"cursor": "garbage"}).json()["error"] == (
            "invalid_cursor")
        assert http.get("/sessions", params={"limit": 0}).status_code == 400
        assert http.get("/sessions", params={"status": "weird"}).status_code == 400


def test_openapi_document_is_served(live_server):
    served = httpx.get(f"{live_server.url}/api/v1/openapi.json").json()
    assert served == OPENAPI and served["openapi"].startswith("3.1")
