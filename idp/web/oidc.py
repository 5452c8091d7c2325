"""The OpenID Connect / OAuth 2 endpoints: discovery, JWKS, authorize, token,
userinfo, introspection, revocation."""

from __future__ import annotations

import json
from functools import wraps
from urllib.parse import parse_qsl, urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy.exc import IntegrityError

from .. import sessions as sessions_domain
from .. import step_up, tokens
from ..metrics import TOKENS
from ..models import Consent, EndReason, db
from ..oauth import introspection, scopes
from ..oauth.endpoints import (
    ASSERTION_ALGORITHMS,
    INTROSPECTION_AUTH_METHODS,
    REVOCATION_AUTH_METHODS,
    userinfo_answer,
)
from ..oauth.grants import CLIENT_AUTH_METHODS, Principal
from ..oauth.server import SCOPES_SUPPORTED
from ..runtime import client_ip, config, now, services
from . import csrf, current, error_response
from .auth import remember_authorization, remember_step_up
from .forms import ConfirmLogoutForm, ConsentForm

bp = Blueprint("oidc", __name__)

def _server():
    return current_app.extensions["idp.oauth"]


GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials",
               "urn:ietf:params:oauth:grant-type:device_code")


def discovery_document() -> dict:
    """Exactly what is implemented, nothing that is not (OIDC Discovery §3, RFC 8414)."""
    issuer = config()["ISSUER"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "introspection_endpoint": f"{issuer}/oauth/introspect",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "end_session_endpoint": f"{issuer}/oauth/end-session",
        "device_authorization_endpoint": f"{issuer}/oauth/device",
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": INTROSPECTION_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": REVOCATION_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent"],
        "acr_values_supported": list(step_up.ACR_VALUES),
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "acr", "amr", "sid",
            "azp", "name", "preferred_username", "updated_at", "email", "email_verified",
        ],
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
    }


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
def discovery():
    cached = current_app.extensions.get("idp.discovery")
    if cached is None:
        cached = json.dumps(discovery_document(), separators=(",", ":")).encode()
        current_app.extensions["idp.discovery"] = cached
    return Response(cached, mimetype="application/json",
                    headers={"Cache-Control": "public, max-age=3600"})


@bp.get("/.well-known/jwks.json")
def jwks():
    body = services().keys.jwks_json(now())
    max_age = int(config()["JWKS_MAX_AGE"].total_seconds())  # what key rotation waits for
    return Response(body, mimetype="application/json",
                    headers={"Cache-Control": f"public, max-age={max_age}"})


# -- authorization endpoint -------------------------------------------------------


def _with_issuer(response):
    """RFC 9207: every authorization response that goes back to the client names us."""
    if response.status_code in (301, 302, 303) and response.location:
        response.location = add_params_to_uri(response.location, {"iss": config()["ISSUER"]})
    return response


def _error(error: OAuth2Error, state: str | None = None):
    """Back to the client only with a validated redirect URI; a page otherwise."""
    db.session.commit()
    if error.redirect_uri:
        error.state = state
        return _with_issuer(_server().handle_error_response(None, error))
    return render_template(
        "errors/error.html",
        status=400,
        title="This sign-in link is not valid",
        message=error.description or "The application sent an invalid sign-in request.",
        hint="Go back to the application and try signing in again. "
        "If it keeps happening, tell the application's owner.",
    ), 400


def _unsupported_response_type(params, state):
    """RFC 6749 §4.1.2.1: to the client only once its redirect URI is validated."""
    client = _server().query_client(params.get("client_id", ""))
    redirect_uri = None
    if client is not None:
        requested = params.get("redirect_uri")
        if requested:
            redirect_uri = requested if client.check_redirect_uri(requested) else None
        else:
            redirect_uri = client.get_default_redirect_uri()
    error = InvalidRequestError("Only response_type=code is supported.", redirect_uri=redirect_uri)
    error.error = "unsupported_response_type"
    return _error(error, state)


def _needs_login(principal_session, params) -> bool:
    if principal_session is None:
        return True
    prompts = params.get("prompt", "").split()
    if "login" in prompts:
        return True
    hint = params.get("id_token_hint")
    if hint:
        sub = _hint_subject(hint)
        if sub is not None and sub != principal_session.user.sub:
            return True
    return False


def _hint_subject(hint: str) -> str | None:
    """The subject of an ID token we issued; an expired hint still identifies a user."""
    claims = tokens.id_token_claims(hint[:16384], signer=services().signer,
                                    issuer=config()["ISSUER"], now=now())
    if claims is None:
        raise InvalidRequestError("'id_token_hint' is not an ID token of this provider.")
    return claims["sub"]


def _consented(principal: Principal, client, scope: str) -> bool:
    if client.first_party:
        return True
    consent = db.session.get(Consent, (principal.user.id, client.client_id))
    return consent is not None and set(scope.split()) <= set(consent.scope.split())


@bp.route("/authorize", methods=["GET", "POST"])
def authorize():
    if request.method == "POST" and not request.query_string:
        # OIDC Core 3.1.2.1: a relying party may POST the request, form-serialized. It is
        # answered as the same request by GET: a 303 brings back the browser's SameSite=Lax
        # cookie that a cross-site POST leaves behind, and the request survives sign-in.
        db.session.commit()
        return redirect(url_for("oidc.authorize") + "?" + urlencode(
            [(k, v) for k, v in request.form.items(multi=True) if k != "csrf_token"]), 303)
    if request.method == "POST":
        csrf.protect()  # the consent form posts to the URL with the query: its token counts
    params = request.args
    state = params.get("state")
    live = current.login_session()
    principal = Principal(live.user, live) if live else None
    try:
        if params.get("response_type") != "code":
            return _unsupported_response_type(params, state)
        try:
            grant = _server().get_consent_grant(end_user=principal)
        except ValueError:
            # Authlib refuses to echo hostile input into an error description.
            return _error(InvalidRequestError("The request has invalid parameters."), state)
        redirect_uri = grant.redirect_uri
        if "request" in params or "request_uri" in params:
            code = "request_not_supported" if "request" in params else "request_uri_not_supported"
            error = InvalidRequestError("Request objects are not supported.",
                                        redirect_uri=redirect_uri)
            error.error = code
            raise error
        if len(params.get("nonce", "")) > 255 or len(params.get("state", "")) > 2048:
            raise InvalidRequestError("'nonce' (255) or 'state' (2048) is too long.",
                                      redirect_uri=redirect_uri)
        if params.get("response_mode", "query") != "query":
            raise InvalidRequestError("Only response_mode=query is supported.",
                                      redirect_uri=redirect_uri)
        try:
            needs_login = _needs_login(live, params)
        except InvalidRequestError as exc:
            exc.redirect_uri = redirect_uri
            raise
        prompts = params.get("prompt", "").split()
        if needs_login:
            if "none" in prompts:
                raise LoginRequiredError(redirect_uri=redirect_uri)
            remember_authorization(urlencode(list(params.items(multi=True))))
            db.session.commit()
            return redirect(url_for("auth.login"), 303)
        try:
            step = step_up.needed(live, max_age=params.get("max_age"),
                                  acr_values=params.get("acr_values"),
                                  claims=params.get("claims"), now=now())
        except step_up.Unmet as unmet:
            error = InvalidRequestError(str(unmet), redirect_uri=redirect_uri)
            error.error = "unmet_authentication_requirements"
            raise error from None
        except ValueError as bad:
            raise InvalidRequestError(str(bad), redirect_uri=redirect_uri) from None
        if step is not None:
            if "none" in prompts:
                raise LoginRequiredError(redirect_uri=redirect_uri)
            remember_authorization(urlencode(list(params.items(multi=True))))
            remember_step_up(step)
            db.session.commit()
            return redirect(url_for("auth.reauthenticate"), 303)
        client = grant.client
        # What will be issued: the code is saved with the same narrowing (scopes.approvable).
        scope = scopes.approvable(grant.request.scope, principal.user)
        if "consent" in prompts or not _consented(principal, client, scope):
            if "none" in prompts:
                raise ConsentRequiredError(redirect_uri=redirect_uri)
            form = ConsentForm()
            if request.method == "POST" and form.validate_on_submit():
                if not form.allow.data:
                    response = _server().create_authorization_response(
                        grant=grant, grant_user=None
                    )
                    db.session.commit()
                    return _with_issuer(response)
                _remember_consent(principal, client, scope)
            else:
                db.session.commit()
                g.form_action = _origin(redirect_uri)
                return render_template(
                    "consent.html", form=form, client=client,
                    scopes=scopes.described(scope),
                    user=principal.user, action=request.full_path,
                )
        response = _server().create_authorization_response(grant=grant, grant_user=principal)
        db.session.commit()
        return _with_issuer(response)
    except OAuth2Error as error:
        return _error(error, state)


def _origin(uri: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") else ""


def _remember_consent(principal: Principal, client, scope: str) -> None:
    key = (principal.user.id, client.client_id)
    consent = db.session.get(Consent, key)
    if consent is None:
        try:
            # A double click posts the form twice: the second insert waits for the first
            # and then meets its row; it updates that row instead of failing with a 500.
            with db.session.begin_nested():
                db.session.add(Consent(user_id=key[0], client_id=key[1], scope=scope,
                                       granted_at=now()))
            return
        except IntegrityError:
            consent = db.session.get(Consent, key, populate_existing=True)
    consent.scope = " ".join(sorted(set(consent.scope.split()) | set(scope.split())))
    consent.granted_at = now()


# -- back-channel endpoints (no cookies, no CSRF: clients authenticate) ---------------


def _committing(response):
    if response.status_code < 400:
        db.session.commit()
    else:
        db.session.rollback()
    return response


REPEATED = object()
#: RFC 8707 §2: a client may name several resources.
REPEATABLE = frozenset({"resource"})


def _repeats(pairs) -> bool:
    """RFC 6749 §3.1, §3.2: parameters MUST NOT be included more than once. Which of two
    tokens, codes or secrets would be meant? The one rule for every body type and every
    back-channel endpoint (Authlib would silently take the first)."""
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen and key not in REPEATABLE:
            return True
        seen.add(key)
    return False


def _parameters_repeated() -> bool:
    """Whether the query and the body (urlencoded or multipart) name a parameter twice."""
    pairs = list(request.args.items(multi=True))
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        pairs += request.form.items(multi=True)
    return _repeats(pairs)


def _repeated_answer() -> Response:
    response = make_response(error_response(
        400, "A parameter was sent more than once.", "invalid_request"))
    response.headers["Cache-Control"] = "no-store"
    return response


def single_valued(view):
    """Refuse a request that names a parameter twice, before the endpoint reads it."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if _parameters_repeated():
            db.session.rollback()
            return _repeated_answer()
        return view(*args, **kwargs)

    return wrapper


def _urlencoded() -> dict | object | None:
    """The form body as Werkzeug parses it, without building its MultiDict; None when it
    is not a form (or there is a query too), ``REPEATED`` when it names a parameter twice."""
    if request.mimetype != "application/x-www-form-urlencoded" or request.query_string:
        return None
    try:
        pairs = parse_qsl(request.get_data(cache=True).decode(), keep_blank_values=True,
                          errors="werkzeug.url_quote")
    except ValueError:
        return None
    return REPEATED if _repeats(pairs) else dict(pairs)


@bp.post("/oauth/token")
@single_valued
def token():
    response = _committing(_server().create_token_response())
    outcome = "issued"
    if response.status_code >= 400:
        outcome = (response.get_json(silent=True) or {}).get("error", "error")
    grant_type = request.form.get("grant_type", "")
    TOKENS.labels(grant_type if grant_type in GRANT_TYPES else "other", outcome[:40]).inc()
    return response


_JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store",
                 "Pragma": "no-cache"}


def _json(body: dict) -> Response:
    """The same bytes Authlib's endpoints give through Flask's JSON (sorted keys, ASCII),
    with no-store, built directly: the hot paths' answers."""
    return Response(json.dumps(body, sort_keys=True), 200, _JSON_HEADERS)


@bp.route("/userinfo", methods=["GET", "POST"])
@single_valued
def userinfo():
    claims = userinfo_answer(request.headers.get("Authorization"), signer=services().signer,
                             issuer=config()["ISSUER"], now=now())
    if claims is not None:
        return _json(claims)
    response = _server().create_endpoint_response("userinfo")
    response.headers["Cache-Control"] = "no-store"
    challenge = response.headers.get("WWW-Authenticate", "")
    if challenge:
        realm = f'Bearer realm="{config()["ISSUER"]}"'
        # RFC 6750 §3.1: no error code or other error information when no token was sent
        # (Authlib's "missing_authorization" is not an RFC 6750 code).
        if "missing_authorization" in challenge:
            response = make_response("", 401, {"WWW-Authenticate": realm,
                                               "Cache-Control": "no-store"})
        else:
            response.headers["WWW-Authenticate"] = realm + ", " + challenge.split(" ", 1)[1]
    return _committing(response)


@bp.post("/oauth/introspect")
def introspect():
    form = _urlencoded()  # the common case, parsed once; anything else by the one rule
    if form is REPEATED or (form is None and _parameters_repeated()):
        return _repeated_answer()
    body = None if form is None else introspection.answer(
        form, request.headers.get("Authorization"), signer=services().signer,
        issuer=config()["ISSUER"], now=now())
    if body is not None:
        return _json(body)
    response = _server().create_endpoint_response("introspection")
    response.headers["Cache-Control"] = "no-store"
    return _committing(response)


@bp.post("/oauth/revoke")
@single_valued
def revoke():
    return _committing(_server().create_endpoint_response("revocation"))


@bp.post("/oauth/device")
@single_valued
def device_authorization():
    return _committing(_server().create_endpoint_response("device_authorization"))


# -- RP-Initiated Logout 1.0 ---------------------------------------------------------


def _logout_error(message: str):
    db.session.commit()
    return render_template(
        "errors/error.html", status=400, title="This sign-out link is not valid",
        message=message, hint="You are still signed in. Go back to the application and try "
        "again, or sign out from your account page.",
    ), 400


@bp.route("/oauth/end-session", methods=["GET", "POST"])
def end_session():
    """Ends the browser's session for a relying party. Without a hint tying the request
    to this browser's session the user confirms first (no logout by a stray link)."""
    params = request.values
    hint, client_id = params.get("id_token_hint"), params.get("client_id")
    target, state = params.get("post_logout_redirect_uri"), params.get("state")
    claims = None
    if hint:
        claims = tokens.id_token_claims(hint[:16384], signer=services().signer,
                                        issuer=config()["ISSUER"], now=now())
        if claims is None:
            return _logout_error("The id_token_hint is not an ID token of this provider.")
    client = None
    if client_id:
        client = _server().query_client(client_id)
        if client is None:
            return _logout_error("The client_id is not a registered client.")
    if claims is not None:
        audience = claims.get("aud")
        audience = [audience] if isinstance(audience, str) else list(audience or [])
        if client is not None and client.client_id not in audience:
            return _logout_error("The id_token_hint was not issued to this client.")
        if client is None and audience:
            client = _server().query_client(audience[0])
    if target and (client is None or target not in client.post_logout_redirect_uris):
        return _logout_error("The post_logout_redirect_uri is not registered for this client.")
    live = current.login_session()
    tied = live is not None and claims is not None and claims.get("sid") == live.id
    form = ConfirmLogoutForm()
    if live is not None and not tied:
        confirmed = request.method == "POST" and "confirm" in request.form and form.validate()
        if not confirmed:
            db.session.commit()
            return render_template(
                "logout_confirm.html", form=form, client=client, session=live,
                params={k: v for k, v in params.items() if k in LOGOUT_PARAMS},
            )
    if live is not None:
        sessions_domain.end(live, EndReason.LOGOUT, now=now(), actor=f"user:{live.user.sub}",
                            ip=client_ip())
    db.session.commit()
    session.clear()
    if target:
        response = redirect(add_params_to_uri(target, {"state": state} if state else {}), 303)
    else:
        response = current_app.make_response(
            render_template("logged_out.html", client=client))
    current.clear_cookie(response)
    return response


LOGOUT_PARAMS = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state",
                 "logout_hint", "ui_locales")


def exempt_from_csrf(csrf) -> None:
    csrf.exempt(end_session)  # relying parties may POST; the confirm form checks its own token
    csrf.exempt(authorize)  # likewise; the consent form's post is checked in the view
    for view in (token, userinfo, introspect, revoke, device_authorization):
        csrf.exempt(view)

