"""An independent relying party: httpx for HTTP, Authlib's *client* for the OAuth
requests (PKCE, code exchange, refresh) and joserfc for verifying tokens against
the provider's published JWKS. None of the provider's own code is used here."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import joserfc.jwt as jwt
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from joserfc.jwk import KeySet

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(html: str) -> str:
    match = CSRF.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


@dataclass
class Browser:
    """A cookie jar that follows redirects by hand, as a browser would, stopping at the RP."""

    base: str
    http: httpx.Client = field(default=None)
    user_agent: str = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
    )

    def __post_init__(self):
        self.http = httpx.Client(headers={"User-Agent": self.user_agent}, timeout=10)

    def go(self, url: str, *, stop_at: str | None = None, method: str = "GET", data=None,
           max_hops: int = 10) -> httpx.Response:
        response = self.http.request(method, url, data=data)
        for _ in range(max_hops):
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            location = urljoin(str(response.url), response.headers["location"])
            if stop_at and location.startswith(stop_at):
                return response
            response = self.http.get(location)
        raise AssertionError("too many redirects")

    def login(self, response: httpx.Response, email: str, password: str, *,
              stop_at: str | None = None) -> httpx.Response:
        assert "Sign in" in response.text, response.text[:500]
        return self.go(
            urljoin(self.base, "/login"), method="POST", stop_at=stop_at,
            data={"csrf_token": csrf_token(response.text), "email": email, "password": password},
        )


class RelyingParty:
    def __init__(self, issuer: str, client_id: str, client_secret: str | None, redirect_uri: str):
        self.issuer = issuer
        self.http = httpx.Client(timeout=10)
        self.metadata = self.http.get(f"{issuer}/.well-known/openid-configuration").json()
        assert self.metadata["issuer"] == issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.oauth = OAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_basic" if client_secret else "none",
            redirect_uri=redirect_uri,
            scope="openid profile email",
            code_challenge_method="S256",
            timeout=10,
        )

    def keys(self) -> KeySet:
        return KeySet.import_key_set(self.http.get(self.metadata["jwks_uri"]).json())

    def authorization_url(self, **extra) -> tuple[str, dict]:
        state = generate_token(20)
        nonce = generate_token(20)
        verifier = secrets.token_urlsafe(48)
        url, _ = self.oauth.create_authorization_url(
            self.metadata["authorization_endpoint"], state=state, nonce=nonce,
            code_verifier=verifier, **extra,
        )
        return url, {"state": state, "nonce": nonce, "code_verifier": verifier}

    def callback_params(self, response: httpx.Response) -> dict:
        location = response.headers["location"]
        assert location.startswith(self.redirect_uri), location
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    def exchange(self, code: str, verifier: str) -> dict:
        return self.oauth.fetch_token(
            self.metadata["token_endpoint"], code=code, code_verifier=verifier,
            grant_type="authorization_code",
        )

    def refresh(self, refresh_token: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return self._post_token(data)

    def _post_token(self, data: dict) -> httpx.Response:
        if self.client_secret:
            return self.http.post(self.metadata["token_endpoint"], data=data,
                                  auth=(self.client_id, self.client_secret))
        return self.http.post(self.metadata["token_endpoint"],
                              data={**data, "client_id": self.client_id})

    def verify_id_token(self, id_token: str, nonce: str | None) -> dict:
        token = jwt.decode(id_token, self.keys(), algorithms=["RS256", "ES256"])
        options = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": self.client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
        }
        if nonce:
            options["nonce"] = {"essential": True, "value": nonce}
        jwt.JWTClaimsRegistry(**options).validate(token.claims)
        return token.claims

    def verify_access_token(self, access_token: str) -> tuple[dict, dict]:
        token = jwt.decode(access_token, self.keys(), algorithms=["RS256", "ES256"])
        jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer}).validate(
            token.claims
        )
        return token.header, token.claims

    def userinfo(self, access_token: str) -> httpx.Response:
        return self.http.get(self.metadata["userinfo_endpoint"],
                             headers={"Authorization": f"Bearer {access_token}"})

    def introspect(self, token: str, *, auth: tuple[str, str] | None = None, **extra):
        return self.http.post(self.metadata["introspection_endpoint"], data={"token": token, **extra},
                              auth=auth or (self.client_id, self.client_secret))

    def revoke(self, token: str, **extra):
        return self.http.post(self.metadata["revocation_endpoint"], data={"token": token, **extra},
                              auth=(self.client_id, self.client_secret))
