"""What relying parties see at the edges: discovery, JWKS, bad requests, PKCE
rules, public clients, ES256, concurrent refreshes. All over real HTTP."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import joserfc.jwt as jwt
import pytest

from tests.conftest import PASSWORD
from tests.relying_party import Browser, RelyingParty, csrf_token

pytestmark = pytest.mark.e2e


@pytest.fixture
def user(make_user):
    return make_user("ada@example.com")


def test_discovery_lists_exactly_what_is_implemented(live_server):
    doc = httpx.get(f"{live_server.url}/.well-known/openid-configuration").json()
    base = live_server.url
    assert doc["issuer"] == base
    assert doc["authorization_endpoint"] == f"{base}/authorize"
    assert doc["token_endpoint"] == f"{base}/oauth/token"
    assert doc["userinfo_endpoint"] == f"{base}/userinfo"
    assert doc["introspection_endpoint"] == f"{base}/oauth/introspect"
    assert doc["revocation_endpoint"] == f"{base}/oauth/revoke"
    assert doc["response_types_supported"] == ["code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "offline_access" not in doc["scopes_supported"]
    assert "implicit" not in doc["grant_types_supported"]
    assert doc["request_uri_parameter_supported"] is False
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert set(doc["id_token_signing_alg_values_supported"]) == {"RS256", "ES256"}
    for key, value in doc.items():
        if key.endswith("_endpoint") or key == "jwks_uri":
            status = httpx.request("GET" if key in ("jwks_uri", "authorization_endpoint",
                                                    "userinfo_endpoint") else "POST", value)
            assert status.status_code != 404, key


def test_jwks_publishes_public_keys_with_kids(live_server):
    keys = httpx.get(f"{live_server.url}/.well-known/jwks.json").json()["keys"]
    assert {k["alg"] for k in keys} >= {"RS256", "ES256"}
    for key in keys:
        assert key["kid"] and key["use"] == "sig"
        assert "d" not in key and "p" not in key


def test_unknown_client_gets_an_error_page_and_no_redirect(live_server):
    response = httpx.get(f"{live_server.url}/authorize", params={
        "response_type": "code", "client_id": "nope", "redirect_uri": "https://evil.example/cb",
        "scope": "openid"})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "text/html" in response.headers["content-type"]
    assert "not valid" in response.text


@pytest.mark.parametrize("redirect_uri", [
    "https://evil.example/callback",
    "http://127.0.0.1:9999/callback/extra",
    "http://127.0.0.1:9999/callback?x=1",
    "http://127.0.0.1:9999/CALLBACK",
    "//evil.example/callback",
])
def test_unregistered_redirect_uri_is_never_followed(live_server, make_client, redirect_uri):
    client = make_client()
    response = httpx.get(f"{live_server.url}/authorize", params={
        "response_type": "code", "client_id": client.client_id, "redirect_uri": redirect_uri,
        "scope": "openid", "code_challenge": "x" * 43, "code_challenge_method": "S256"})
    assert response.status_code == 400
    assert "location" not in response.headers


def _authorize(live_server, client, **params):
    query = {"response_type": "code", "client_id": client.client_id,
             "redirect_uri": client.redirect_uri, "scope": "openid", "state": "s1", **params}
    return httpx.get(f"{live_server.url}/authorize", params=query)


def _error_of(response) -> dict:
    assert response.status_code in (302, 303), response.text[:300]
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def test_errors_after_redirect_validation_go_back_to_the_client(live_server, make_client):
    client = make_client(scope="openid profile")
    error = _error_of(_authorize(live_server, client, scope="openid email"))  # not its scope
    assert error["error"] == "invalid_scope" and error["state"] == "s1"
    assert error["iss"] == live_server.url
    assert _error_of(_authorize(live_server, client, response_type="token"))["error"] == (
        "unsupported_response_type")
    assert _error_of(_authorize(live_server, client, request="eyJ..."))["error"] == (
        "request_not_supported")


def test_pkce_plain_is_refused_and_public_clients_must_use_s256(live_server, make_client):
    confidential = make_client()
    plain = _authorize(live_server, confidential, code_challenge="a" * 43,
                       code_challenge_method="plain")
    assert _error_of(plain)["error"] == "invalid_request"
    implicit_plain = _authorize(live_server, confidential, code_challenge="a" * 43)
    assert _error_of(implicit_plain)["error"] == "invalid_request"
    public = make_client("CLI", public=True, redirect_uri="http://127.0.0.1:8765/cb")
    assert _error_of(_authorize(live_server, public))["error"] == "invalid_request"


def test_public_client_full_flow_with_pkce(live_server, user, make_client):
    public = make_client("SPA", public=True, redirect_uri="http://127.0.0.1:8765/cb")
    rp = RelyingParty(live_server.url, public.client_id, None, public.redirect_uri)
    browser = Browser(live_server.url)
    url, secrets_ = rp.authorization_url()
    page = browser.go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(browser.login(page, "ada@example.com", PASSWORD,
                                              stop_at=rp.redirect_uri))
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    assert rp.verify_id_token(token["id_token"], secrets_["nonce"])
    assert rp.refresh(token["refresh_token"]).status_code == 200


def test_pkce_downgrade_is_refused(live_server, user, make_client):
    """A code issued without a challenge cannot be redeemed with a verifier, and
    a code issued with one cannot be redeemed without."""
    client = make_client()
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    browser = Browser(live_server.url)
    url, secrets_ = rp.authorization_url()
    page = browser.go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(browser.login(page, "ada@example.com", PASSWORD,
                                              stop_at=rp.redirect_uri))
    missing = rp._post_token({"grant_type": "authorization_code", "code": params["code"],
                              "redirect_uri": rp.redirect_uri})
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_es256_client_gets_es256_id_tokens(live_server, user, make_client):
    client = make_client("Mail", id_token_alg="ES256")
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    browser = Browser(live_server.url)
    url, secrets_ = rp.authorization_url()
    page = browser.go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(browser.login(page, "ada@example.com", PASSWORD,
                                              stop_at=rp.redirect_uri))
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    header = jwt.decode(token["id_token"], rp.keys()).header
    assert header["alg"] == "ES256" and header["kid"]


def test_token_endpoint_errors_are_oauth_json(live_server, make_client):
    client = make_client()
    url = f"{live_server.url}/oauth/token"
    unknown = httpx.post(url, data={"grant_type": "authorization_code", "code": "x"},
                         auth=("nope", "nope"))
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    wrong_secret = httpx.post(url, data={"grant_type": "authorization_code", "code": "x"},
                              auth=(client.client_id, "wrong"))
    assert wrong_secret.status_code == 401
    bad_grant = httpx.post(url, data={"grant_type": "password", "username": "a"},
                           auth=(client.client_id, client.client_secret))
    assert bad_grant.json()["error"] == "unsupported_grant_type"
    garbage = httpx.post(url, data={"grant_type": "authorization_code", "code": "a" * 5000},
                         auth=(client.client_id, client.client_secret))
    assert garbage.status_code == 400 and garbage.json()["error"] == "invalid_grant"
    assert garbage.headers["cache-control"] == "no-store"


def test_racing_refreshes_one_wins_and_the_family_is_revoked(live_server, user, make_client):
    client = make_client()
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    browser = Browser(live_server.url)
    url, secrets_ = rp.authorization_url()
    page = browser.go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(browser.login(page, "ada@example.com", PASSWORD,
                                              stop_at=rp.redirect_uri))
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    results: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def race():
        with httpx.Client(timeout=20) as http:
            barrier.wait()
            results.append(http.post(rp.metadata["token_endpoint"], data={
                "grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
                auth=(client.client_id, client.client_secret)))

    threads = [threading.Thread(target=race) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 400, 400, 400, 400, 400], [r.text for r in results]
    winner = next(r.json() for r in results if r.status_code == 200)
    assert rp.refresh(winner["refresh_token"]).json()["error"] == "invalid_grant"
    assert all(r.json()["error"] == "invalid_grant" for r in results if r.status_code == 400)


def test_userinfo_accepts_post_and_refuses_missing_or_bad_tokens(live_server, user, make_client):
    client = make_client()
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    browser = Browser(live_server.url)
    url, secrets_ = rp.authorization_url(scope="openid email")
    page = browser.go(url, stop_at=rp.redirect_uri)
    params = rp.callback_params(browser.login(page, "ada@example.com", PASSWORD,
                                              stop_at=rp.redirect_uri))
    token = rp.exchange(params["code"], secrets_["code_verifier"])
    posted = httpx.post(f"{live_server.url}/userinfo",
                        headers={"Authorization": f"Bearer {token['access_token']}"})
    assert posted.status_code == 200
    assert "name" not in posted.json() and posted.json()["email"] == "ada@example.com"
    missing = httpx.get(f"{live_server.url}/userinfo")
    assert missing.status_code == 401  # RFC 6750 §3.1: no error code when no token was sent
    assert missing.headers["www-authenticate"] == f'Bearer realm="{live_server.url}"'
    assert missing.content == b"" and "missing_authorization" not in missing.text
    forged = httpx.get(f"{live_server.url}/userinfo",
                       headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."})
    assert forged.status_code == 401


def test_login_page_is_labelled_and_errors_do_not_say_which_part_was_wrong(live_server, user):
    browser = Browser(live_server.url)
    page = browser.go(f"{live_server.url}/login")
    assert '<label for="email">Email</label>' in page.text
    assert '<label for="password">Password</label>' in page.text
    assert ">Sign in</button>" in page.text
    wrong = browser.login(page, "ada@example.com", "wrong password!")
    unknown = browser.login(browser.go(f"{live_server.url}/login"), "who@example.com", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "Incorrect email or password." in wrong.text
    assert "Incorrect email or password." in unknown.text


def test_login_sets_a_fresh_session_cookie_and_records_the_device(live_server, user, app):
    browser = Browser(live_server.url)
    page = browser.go(f"{live_server.url}/login")
    before = dict(browser.http.cookies)
    response = browser.http.post(f"{live_server.url}/login", data={
        "csrf_token": __import__("tests.relying_party").relying_party.csrf_token(page.text),
        "email": "ada@example.com", "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert browser.http.cookies.get("idp") != before.get("idp")  # pre-login state rotated
    with app.app_context():
        from idp.models import LoginSession, db

        row = db.session.query(LoginSession).one()
        assert row.device_label == "Chrome on macOS" and row.device_type == "desktop"
        assert row.ip_first == "127.0.0.1"  # X-Forwarded-For ignored with no trusted proxy
        assert row.location == "This computer"
        value = browser.http.cookies.get("idp_session")
        assert value and value.split(".")[0] == row.id and row.secret_hash not in value


def test_authorize_with_bad_max_age_and_foreign_id_token_hint(live_server, user, make_client):
    client = make_client()
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret, client.redirect_uri)
    browser = Browser(live_server.url)
    url, _ = rp.authorization_url()
    page = browser.go(url, stop_at=rp.redirect_uri)
    browser.login(page, "ada@example.com", PASSWORD, stop_at=rp.redirect_uri)
    query = {"response_type": "code", "client_id": client.client_id, "scope": "openid",
             "redirect_uri": client.redirect_uri, "state": "z", "max_age": "soon"}
    response = browser.http.get(f"{live_server.url}/authorize?{urlencode(query)}")
    assert _error_of(response)["error"] == "invalid_request"
    query.pop("max_age")
    query["id_token_hint"] = "not-a-token"
    response = browser.http.get(f"{live_server.url}/authorize?{urlencode(query)}")
    assert _error_of(response)["error"] == "invalid_request"


def test_the_authorization_request_may_be_posted_form_serialized(live_server, user, make_client):
    """OIDC Core 3.1.2.1: the authorization endpoint supports POST. A relying party's
    auto-posted form is answered as the same request by GET (303), which brings back the
    browser's SameSite=Lax cookie and survives the sign-in in between."""
    client = make_client(first_party=False)
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret,
                      client.redirect_uri)
    url, secrets = rp.authorization_url(scope="openid email")
    form = dict(parse_qs(urlsplit(url).query, keep_blank_values=True))
    browser = Browser(live_server.url)
    posted = browser.http.post(rp.metadata["authorization_endpoint"],
                               data={k: v[0] for k, v in form.items()})
    assert posted.status_code == 303
    assert parse_qs(urlsplit(posted.headers["location"]).query) == form
    page = browser.go(str(posted.url.join(posted.headers["location"])))
    consent = browser.login(page, "ada@example.com", PASSWORD, stop_at=rp.redirect_uri)
    assert "wants to access your account" in consent.text
    # A consent posted without the page's token (from another site) grants nothing.
    forged = browser.http.post(str(consent.url), data={"allow": "Allow"})
    assert forged.status_code == 400 and "sent from another site" in forged.text
    answer = browser.go(str(consent.url), method="POST", stop_at=rp.redirect_uri,
                        data={"csrf_token": csrf_token(consent.text), "allow": "Allow"})
    tokens = rp.exchange(rp.callback_params(answer)["code"], secrets["code_verifier"])
    assert rp.verify_id_token(tokens["id_token"], secrets["nonce"])["email"] == "ada@example.com"


def _multipart(pairs) -> tuple[bytes, str]:
    boundary = "idp-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in pairs]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), \
        f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("body", ["urlencoded", "multipart", "query and body"])
@pytest.mark.parametrize("path, pairs", [
    ("/oauth/token", [("grant_type", "refresh_token"), ("refresh_token", "a.b"),
                      ("refresh_token", "c.d")]),
    ("/oauth/introspect", [("token", "a.b"), ("token", "c.d")]),
    ("/oauth/revoke", [("token", "a.b"), ("token", "c.d")]),
    ("/oauth/device", [("client_id", "x"), ("scope", "openid"), ("scope", "email")]),
    ("/userinfo", [("access_token", "a"), ("access_token", "b")]),
], ids=["token", "introspect", "revoke", "device", "userinfo"])
def test_a_parameter_named_twice_is_refused_by_every_endpoint_in_every_body(
        live_server, make_client, path, pairs, body):
    """RFC 6749 §3.1-3.2: one rule for every body type and every endpoint — never an
    answer for whichever copy the parser kept."""
    client = make_client()
    url, auth = f"{live_server.url}{path}", (client.client_id, client.client_secret)
    if body == "urlencoded":
        response = httpx.post(url, content=urlencode(pairs), auth=auth,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    elif body == "multipart":
        content, content_type = _multipart(pairs)
        response = httpx.post(url, content=content, auth=auth,
                              headers={"Content-Type": content_type})
    else:
        response = httpx.post(f"{url}?{urlencode(pairs[-1:])}", content=urlencode(pairs[:-1]),
                              auth=auth,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("at_authorize", [True, False])
def test_redirect_uri_at_the_token_endpoint_only_when_it_was_sent_to_authorize(
        live_server, user, make_client, at_authorize):
    """RFC 6749 §4.1.3: REQUIRED at the token endpoint if it was included in the
    authorization request, and then identical."""
    client = make_client()
    rp = RelyingParty(live_server.url, client.client_id, client.client_secret,
                      client.redirect_uri)
    url, secrets = rp.authorization_url(scope="openid")
    if not at_authorize:  # the client's one registered URI is used
        query = [(k, v[0]) for k, v in parse_qs(urlsplit(url).query).items()
                 if k != "redirect_uri"]
        url = f"{rp.metadata['authorization_endpoint']}?{urlencode(query)}"
    browser = Browser(live_server.url)
    page = browser.go(url, stop_at=rp.redirect_uri)
    code = rp.callback_params(browser.login(page, "ada@example.com", PASSWORD,
                                            stop_at=rp.redirect_uri))["code"]
    answer = httpx.post(rp.metadata["token_endpoint"], auth=(client.client_id,
                                                             client.client_secret),
                        data={"grant_type": "authorization_code", "code": code,
                              "code_verifier": secrets["code_verifier"]})
    if at_authorize:
        assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    else:
        assert answer.status_code == 200, answer.text
        assert rp.verify_id_token(answer.json()["id_token"], secrets["nonce"])
