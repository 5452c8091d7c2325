"""Request-scoped glue shared by the protocol and surface layers.

The domain takes plain values; this module turns the current Flask request and
app into those values: one ``now`` per request from the app's clock, the
caller's origin (IP through trusted proxies, device, location), and the
services built once at startup.
"""

from __future__ import annotations

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


@dataclass
class Services:
    config: dict
    clock: Clock
    keys: KeyStore
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
    )
