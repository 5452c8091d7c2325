"""Shared steps: sign a user in at a relying party over real HTTP and get tokens."""

from __future__ import annotations

from tests.conftest import PASSWORD
from tests.relying_party import Browser, RelyingParty, csrf_token


def obtain_tokens(rp: RelyingParty, browser: Browser, email: str = "ada@example.com", *,
                  password: str = PASSWORD, scope: str = "openid profile email") -> dict:
    url, secrets_ = rp.authorization_url(scope=scope)
    response = browser.go(url, stop_at=rp.redirect_uri)
    if response.status_code == 200 and "Sign in" in response.text:
        response = browser.login(response, email, password, stop_at=rp.redirect_uri)
    if response.status_code == 200 and "wants to access your account" in response.text:
        response = browser.go(str(response.url), method="POST", stop_at=rp.redirect_uri,
                              data={"csrf_token": csrf_token(response.text), "allow": "Allow"})
    params = rp.callback_params(response)
    return rp.exchange(params["code"], secrets_["code_verifier"])


def start_session(user, origin, **kwargs):
    """``sessions.start`` as a sign-in with the user's password does it (in a test's own
    transaction: the password is taken as verified under the user's current credentials)."""
    from idp import sessions

    return sessions.start(user, origin, verified_version=user.credentials_version, **kwargs)
