"""Open redirects (RFC 9700 §4.1 and §4.11, OIDC Core §3.1.2.1, RP-Initiated Logout §3):
redirect URIs are compared character for character with the registered ones; any
near miss (scheme-relative, userinfo, backslashes, percent-encoding, trailing dots and
slashes, case, extra query, javascript:, CRLF) gets an error page and no Location at
all, even when the request is otherwise in error; parameters cannot be smuggled into
the client's redirect; and no `next`-like parameter can send a signed-in user off-site."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.conftest import PASSWORD
from tests.security.conftest import ADA, Browser, csrf_of

REGISTERED = "http://127.0.0.1:9999/callback"
BYE = "http://127.0.0.1:9999/bye"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def near_misses(uri: str) -> list[str]:
    """Values an attacker tries in place of ``uri`` (http://127.0.0.1:9999/<path>)."""
    path = urlsplit(uri).path
    cases = [
        "//evil.example" + path,
        "http://evil.example" + path,
        "https://evil.example" + path,
        "http://127.0.0.1:9999@evil.example" + path,
        "http://127.0.0.1:9999%40evil.example" + path,
        "http://evil.example@127.0.0.1:9999" + path,
        "http://127.0.0.1:9999\\@evil.example" + path,
        "http:\\\\evil.example\\" + path.strip("/"),
        "/\\evil.example",
        "\\\\evil.example",
        "http:/evil.example" + path,
        "http://127.0.0.1:9999" + path + "/../../evil",
        "http://127.0.0.1:9999" + path + "%2F..%2F..%2Fevil",
        "http://127.0.0.1:9999" + path + "/",
        "http://127.0.0.1:9999" + path + ".",
        "http://127.0.0.1.:9999" + path,
        "http://127.0.0.1:9999" + path.upper(),
        "HTTP://127.0.0.1:9999" + path,
        "http://127.0.0.1:9999" + path + "?next=http://evil.example",
        "http://127.0.0.1:9999" + path + "?",
        "http://127.0.0.1:9999" + path + "#@evil.example",
        "http://127.0.0.1:9999" + path + ";evil.example",
        "http%3A%2F%2F127.0.0.1%3A9999" + path.replace("/", "%2F"),
        "http://127.0.0.1%3A9999" + path,
        "http://127.0.0.1:09999" + path,
        "http://0x7f.0.0.1:9999" + path,
        "http://2130706433:9999" + path,
        "http://localhost:9999" + path,
        "http://[::1]:9999" + path,
        "https://127.0.0.1:9999" + path,
        "http://127.0.0.1" + path,
        "http://127.0.0.1:9999" + path.replace("c", "\u0441"),  # Cyrillic es
        " " + uri,
        uri + " ",
        uri + "\r\nLocation: http://evil.example",
        uri + "%0d%0aLocation:%20http://evil.example",
        uri + "\x00",
        "javascript:alert(1)//" + uri,
        "javascript://127.0.0.1:9999" + path + "%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
        uri.replace("http", "ws"),
    ]
    return [case for case in cases if case != uri]


REDIRECT_CASES = near_misses(REGISTERED)
LOGOUT_CASES = near_misses(BYE)


def assert_no_redirect(response, what: str) -> None:
    assert response.status_code == 400, (what, response.status_code, response.headers.get("Location"))
    assert "Location" not in response.headers, (what, response.headers.get("Location"))
    assert response.mimetype == "text/html"


def only_to(response, registered: str) -> dict:
    """A redirect must go to exactly ``registered``, with each parameter once."""
    location = response.headers["Location"]
    base, _, query = location.partition("?")
    assert base == registered, location
    pairs = parse_qsl(query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    assert len(names) == len(set(names)), location
    return dict(pairs)


@pytest.fixture
def rp(party):
    return party("Photos", post_logout_redirect_uris=[BYE])


@pytest.fixture
def ada_browser(ada, signed_in):
    return signed_in(ADA)


def authorize(rp, redirect_uri: str, **extra) -> str:
    params = {"response_type": "code", "client_id": rp.client_id, "redirect_uri": redirect_uri,
              "scope": "openid", "state": "s", "code_challenge": CHALLENGE,
              "code_challenge_method": "S256", **extra}
    return "/authorize?" + urlencode(params)


def misdirected(response) -> str | None:
    """What is wrong with an answer to a near miss, or None (an error page, no Location)."""
    if response.status_code != 400 or "Location" in response.headers \
            or response.mimetype != "text/html":
        return f"{response.status_code} Location={response.headers.get('Location')!r}"
    return None


def test_authorize_never_redirects_to_a_near_miss_of_the_registered_uri(rp, ada_browser):
    """Each near miss three ways: a valid request from a signed-in user (a code would be
    issued were the URI accepted), a request also in error, and prompt=none without a
    session (login_required must not bounce there either)."""
    anonymous = Browser(ada_browser.app)
    wrong = {}
    for redirect_uri in REDIRECT_CASES:
        for how, browser, extra in (("valid", ada_browser, {}),
                                    ("error", ada_browser, {"response_type": "token"}),
                                    ("prompt=none", anonymous, {"prompt": "none"})):
            problem = misdirected(browser.get(authorize(rp, redirect_uri, **extra)))
            if problem:
                wrong[f"{how}: {redirect_uri!r}"] = problem
    assert not wrong, "\n" + "\n".join(f"{k} -> {v}" for k, v in wrong.items())


def test_the_exact_registered_uri_is_the_only_one_that_works(rp, ada_browser):
    response = ada_browser.get(authorize(rp, REGISTERED))
    assert response.status_code in (302, 303)
    params = only_to(response, REGISTERED)
    assert params["state"] == "s" and params["code"]


def test_a_second_redirect_uri_parameter_cannot_override_the_first(rp, ada_browser):
    for first, second in ((REGISTERED, "http://evil.example/callback"),
                          ("http://evil.example/callback", REGISTERED)):
        query = urlencode([("response_type", "code"), ("client_id", rp.client_id),
                           ("redirect_uri", first), ("redirect_uri", second), ("scope", "openid"),
                           ("code_challenge", CHALLENGE), ("code_challenge_method", "S256")])
        response = ada_browser.get("/authorize?" + query)
        if "Location" in response.headers:
            only_to(response, REGISTERED)
        else:
            assert response.status_code == 400


def test_parameters_cannot_be_smuggled_into_the_clients_redirect(rp, ada_browser):
    state = "x&code=attacker&iss=http://evil.example&state=y#frag"
    response = ada_browser.get(authorize(rp, REGISTERED, state=state,
                                         iss="http://evil.example", code="attacker"))
    params = only_to(response, REGISTERED)
    assert params["state"] == state
    assert params["code"] != "attacker"
    assert params["iss"] == "http://127.0.0.1:5000"
    error = ada_browser.get(authorize(rp, REGISTERED, state=state, response_type="token"))
    params = only_to(error, REGISTERED)
    assert params["state"] == state and params["error"] == "unsupported_response_type"


def test_an_unknown_client_gets_an_error_page_whatever_the_uri(ada_browser):
    response = ada_browser.get("/authorize?" + urlencode({
        "response_type": "code", "client_id": "nope", "redirect_uri": "http://evil.example/cb"}))
    assert_no_redirect(response, "unknown client")


def test_with_several_registered_uris_omitting_the_parameter_is_refused(party, ada_browser):
    from idp import accounts
    from idp.models import db

    app = ada_browser.app
    with app.app_context():
        client, secret = accounts.create_client(
            name="Two", redirect_uris=[REGISTERED, "http://127.0.0.1:9999/other"],
            first_party=True, now=app.extensions["idp"].clock.now())
        db.session.commit()
        client_id = client.client_id
        db.session.remove()
    response = ada_browser.get("/authorize?" + urlencode({
        "response_type": "code", "client_id": client_id, "scope": "openid",
        "code_challenge": CHALLENGE, "code_challenge_method": "S256"}))
    assert_no_redirect(response, "ambiguous default")


# -- RP-initiated logout -----------------------------------------------------------------------


def test_end_session_never_redirects_to_a_near_miss_of_the_registered_uri(rp, ada_browser):
    wrong = {}
    for target in LOGOUT_CASES:
        for params in ({"client_id": rp.client_id, "post_logout_redirect_uri": target,
                        "state": "s"},
                       {"post_logout_redirect_uri": target}):
            problem = misdirected(ada_browser.get("/oauth/end-session?" + urlencode(params)))
            if problem:
                wrong[repr(params)] = problem
    assert not wrong, "\n" + "\n".join(f"{k} -> {v}" for k, v in wrong.items())
    # The user stays signed in: an invalid logout request ends nothing.
    assert ada_browser.get("/account/sessions").status_code == 200


def test_a_post_logout_uri_of_another_client_is_refused(rp, party, ada_browser):
    other = party("Mail", post_logout_redirect_uris=["http://127.0.0.1:9999/mail-bye"])
    tokens = rp.tokens(ada_browser)
    response = ada_browser.get("/oauth/end-session?" + urlencode({
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": "http://127.0.0.1:9999/mail-bye"}))
    assert_no_redirect(response, "another client's URI")
    mismatch = ada_browser.get("/oauth/end-session?" + urlencode({
        "id_token_hint": tokens["id_token"], "client_id": other.client_id,
        "post_logout_redirect_uri": "http://127.0.0.1:9999/mail-bye"}))
    assert_no_redirect(mismatch, "hint issued to another client")
    assert ada_browser.get("/account/sessions").status_code == 200


def test_the_registered_post_logout_uri_gets_exactly_the_state_back(rp, ada_browser):
    tokens = rp.tokens(ada_browser)
    state = "a&b=c&post_logout_redirect_uri=http://evil.example"
    response = ada_browser.get("/oauth/end-session?" + urlencode({
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE, "state": state}))
    assert response.status_code in (302, 303)
    assert only_to(response, BYE) == {"state": state}


# -- the provider's own pages ----------------------------------------------------------------------

NEXT_PARAMS = ("next", "return_to", "returnTo", "redirect", "redirect_uri", "continue", "url",
               "goto", "target", "destination", "RelayState")
OFF_SITE = ("https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)")


def test_no_next_like_parameter_sends_a_signed_in_user_off_site(app, ada):
    for i, name in enumerate(NEXT_PARAMS):
        for j, value in enumerate(OFF_SITE):
            browser = Browser(app, remote_addr=f"192.0.2.{i * len(OFF_SITE) + j + 1}")
            browser.get(f"/account/sessions?{urlencode({name: value})}")
            page = browser.get(f"/login?{urlencode({name: value})}")
            response = browser.post(f"/login?{urlencode({name: value})}", data={
                "csrf_token": csrf_of(page), "email": ADA, "password": PASSWORD, name: value},
                headers={"Referer": value})
            assert response.status_code == 303
            assert response.headers["Location"] == "/account/sessions", (name, value)
            again = browser.get(f"/login?{urlencode({name: value})}")
            assert again.headers["Location"] == "/account/sessions"
            out = browser.post(f"/logout?{urlencode({name: value})}",
                               data={"csrf_token": browser.csrf(), name: value})
            assert out.headers["Location"] == "/login", (name, value)


def test_after_login_the_device_page_keeps_only_a_short_code(app, ada):
    browser = Browser(app)
    browser.get("/device?" + urlencode({"user_code": "//evil.example/" + "A" * 100,
                                        "next": "https://evil.example"}))
    page = browser.get("/login")
    response = browser.post("/login", data={"csrf_token": csrf_of(page), "email": ADA,
                                            "password": PASSWORD})
    location = response.headers["Location"]
    assert location.startswith("/device?"), location
    assert urlsplit(location).netloc == "" and len(location) < 120
