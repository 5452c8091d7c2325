"""Request-scoped glue shared by the protocol and surface layers.

The domain takes plain values; this module turns the current Flask request and
app into those values: one ``now`` per request from the app's clock, the
caller's origin (IP through trusted proxies, device, location), and the
services built once at startup.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from flask import current_app, g, request

from . import devices
from .clock import Clock
from .counters import Limits
from .factors import Sealer
from .keys import KeyStore
from .lockout import Lockout
from .passwords import Passwords
from .sessions import Origin
from .signing import Signer


@dataclass
class Services:
    config: dict
    clock: Clock
    keys: KeyStore  # storage, rotation, the JWKS
    signer: Signer  # signs and verifies our own tokens with those keys
    passwords: Passwords
    locator: devices.Locator
    limits: Limits  # request and failure limits, on counters every worker shares
    lockout: Lockout  # password guessing per account
    sealer: Sealer  # second-factor secrets at rest


def services() -> Services:
    return current_app.extensions["idp"]


def config() -> dict:
    return current_app.extensions["idp"].config


def now() -> datetime:
    """One instant per request, so every deadline in a request agrees."""
    if "idp_now" not in g:
        g.idp_now = current_app.extensions["idp"].clock.now()
    return g.idp_now


def client_ip() -> str:
    if "idp_ip" not in g:
        g.idp_ip = devices.client_ip(
            request.remote_addr,
            request.headers.get("X-Forwarded-For"),
            config()["TRUSTED_PROXIES"],
        )
    return g.idp_ip


def origin() -> Origin:
    user_agent = devices.truncate_user_agent(request.headers.get("User-Agent"))
    device = devices.describe(user_agent)
    ip = client_ip()
    return Origin(
        ip=ip,
        user_agent=user_agent,
        device_label=device.label,
        device_type=device.device_type,
        location=services().locator.locate(ip),
        device_marker=device_marker(),
    )


def device_cookie_name() -> str:
    return "idp_device" if config()["INSECURE_COOKIES"] else "__Host-idp_device"


def device_marker() -> str:
    """This browser's private marker: the one its device cookie carries, or a new one that
    the response sets (``remember_device``). Only its hash is stored, per user."""
    if "idp_device_marker" not in g:
        sent = request.cookies.get(device_cookie_name(), "")
        if len(sent) == 43 and sent.replace("-", "").replace("_", "").isalnum():
            g.idp_device_marker = sent
        else:
            g.idp_device_marker = g.idp_new_device_marker = secrets.token_urlsafe(32)
    return g.idp_device_marker


def remember_device(response):
    """After a request that made a new marker: the browser keeps it for a year."""
    marker = g.get("idp_new_device_marker")
    if marker is not None:
        response.set_cookie(device_cookie_name(), marker, max_age=365 * 86400, path="/",
                            secure=not config()["INSECURE_COOKIES"], httponly=True,
                            samesite="Lax")
    return response
