"""What a login session looks like to the person who owns it.

The "login sessions" page is only useful if people recognise their own devices
and spot the ones that are not theirs, so each session shows a short device
label ("Chrome on macOS"), a device type, an approximate place ("Paris,
France") and the client IP. This module turns the raw, attacker-controlled
request facts (User-Agent, REMOTE_ADDR, X-Forwarded-For) into those strings.

It is pure domain code: no Flask, and never any network access. Locations come
only from local data (a MaxMind-format ``.mmdb`` file if one is configured,
otherwise the country-level data bundled with ``geoip2fast``), loaded lazily on
first use so that starting the app, and every test that never shows a location,
stays fast.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_USER_AGENT_LENGTH = 512
"""User agents are cut to this many characters before parsing and storage: they
are attacker-controlled, and real ones are far shorter."""

UNKNOWN_BROWSER = "Unknown browser"
UNKNOWN_OS = "Unknown OS"
UNKNOWN_IP = "unknown"
THIS_COMPUTER = "This computer"
LOCAL_NETWORK = "Local network"
UNKNOWN_LOCATION = "Unknown location"

_UA_CACHE_SIZE = 1024
_LOCATION_CACHE_SIZE = 4096


# --------------------------------------------------------------------------- user agents


@dataclass(frozen=True)
class Device:
    """A user agent as a person would describe it."""

    browser: str
    os: str
    device_type: str  # "desktop", "mobile", "tablet", "bot" or "other"
    label: str


_UNKNOWN_DEVICE = Device(UNKNOWN_BROWSER, UNKNOWN_OS, "other", UNKNOWN_BROWSER)

# ua-parser names the mobile build of a browser separately; people don't.
_BROWSER_NAMES = {
    "Other": UNKNOWN_BROWSER,
    "Mobile Safari": "Safari",
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
}

_OS_NAMES = {
    "Other": UNKNOWN_OS,
    "Mac OS X": "macOS",
    "Chrome OS": "ChromeOS",
}

# "python-httpx/0.28.1": command-line and library clients that ua-parser does not
# know still name themselves in their first product token.
_PRODUCT_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9._-]{0,39})/[0-9]")


def truncate_user_agent(user_agent: str | None) -> str:
    """The user agent as it may be stored: at most MAX_USER_AGENT_LENGTH characters.

    NUL characters and lone surrogates are dropped too, because PostgreSQL text
    columns and UTF-8 encoders reject them and the value comes from the client.
    """
    if not isinstance(user_agent, str):
        return ""
    text = user_agent[:MAX_USER_AGENT_LENGTH].replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def describe(user_agent: str | None) -> Device:
    """Describe a user agent; never raises, whatever the client sent."""
    # Truncate before the cache, so the cache never holds huge keys.
    return _describe(truncate_user_agent(user_agent))


@functools.lru_cache(maxsize=_UA_CACHE_SIZE)
def _describe(user_agent: str) -> Device:
    """Parse once per distinct user agent: parsing costs a millisecond or more."""
    if not user_agent.strip():
        return _UNKNOWN_DEVICE
    try:
        from user_agents import parse  # imported late: it takes ~0.2 s to import

        parsed = parse(user_agent)
        browser = _BROWSER_NAMES.get(parsed.browser.family, parsed.browser.family)
        os_name = _OS_NAMES.get(parsed.os.family, parsed.os.family)
        if parsed.is_bot:
            device_type = "bot"
        elif parsed.is_tablet:
            device_type = "tablet"
        elif parsed.is_mobile:
            device_type = "mobile"
        elif parsed.is_pc:
            device_type = "desktop"
        else:
            device_type = "other"
        family = parsed.device.family
    except Exception:  # a parser bug must not break a login
        return _UNKNOWN_DEVICE

    if browser == UNKNOWN_BROWSER and os_name == UNKNOWN_OS:
        match = _PRODUCT_TOKEN.match(user_agent.strip())
        if match and match.group(1).lower() != "mozilla":
            browser = match.group(1)

    # "Safari on iPhone" says more than "Safari on iOS".
    iphone_or_ipad = device_type in ("mobile", "tablet") and family in ("iPhone", "iPad")
    place = family if iphone_or_ipad else os_name
    label = browser if place == UNKNOWN_OS else f"{browser} on {place}"
    return Device(browser=browser, os=os_name, device_type=device_type, label=label)


# --------------------------------------------------------------------------- client IP


def _parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a socket or a proxy header, tolerating ports and brackets.

    Some proxies write "203.0.113.7:51234" or "[2001:db8::1]:443"; dual-stack
    sockets report IPv4 clients as "::ffff:203.0.113.7", shown here as IPv4.
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or len(text) > 100:
        return None
    candidates = [text]
    if text.startswith("[") and "]" in text:
        candidates.append(text[1 : text.index("]")])
    elif text.count(":") == 1:
        candidates.append(text.split(":", 1)[0])
    for candidate in candidates:
        try:
            ip = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip
    return None


def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int) -> str:
    """The client's IP, as normalised text, or "unknown".

    With trusted_proxies=N > 0, the N-th X-Forwarded-For entry from the right is
    the address our outermost trusted proxy saw; entries further left were
    written by the client and can say anything, so they are never read. With 0,
    a header with fewer than N entries, or an unparsable entry, remote_addr is
    used.
    """
    try:
        if trusted_proxies > 0 and isinstance(forwarded_for, str):
            # rsplit bounds the work on a long header to the entries we trust.
            entries = forwarded_for.rsplit(",", trusted_proxies)
            if len(entries) >= trusted_proxies:
                ip = _parse_ip(entries[-trusted_proxies])
                if ip is not None:
                    return str(ip)
        ip = _parse_ip(remote_addr)
        return str(ip) if ip is not None else UNKNOWN_IP
    except Exception:
        return UNKNOWN_IP


# --------------------------------------------------------------------------- location

_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT, also used by VPN overlays
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)

# geoip2fast keeps its tables in module globals, so one loaded instance serves
# every Locator in the process.
_geoip2fast_lock = threading.Lock()
_geoip2fast: Any = None
_geoip2fast_failed = False

# Bundled with geoip2fast; covers IPv4 and IPv6 (the default file is IPv4 only).
_GEOIP2FAST_DATA_FILE = "geoip2fast-ipv6.dat.gz"


def _load_geoip2fast() -> Any:
    """The process-wide geoip2fast instance, loaded on first use (~0.1-0.2 s)."""
    global _geoip2fast, _geoip2fast_failed
    if _geoip2fast is not None or _geoip2fast_failed:
        return _geoip2fast
    with _geoip2fast_lock:
        if _geoip2fast is not None or _geoip2fast_failed:
            return _geoip2fast
        # Importing geoip2fast overwrites PYTHONWARNINGS and PYTHONIOENCODING in
        # os.environ; put them back so child processes are unaffected.
        saved = {key: os.environ.get(key) for key in ("PYTHONWARNINGS", "PYTHONIOENCODING")}
        try:
            import geoip2fast

            # An absolute path: given a bare name, geoip2fast first looks in the
            # current directory, and its data files are unpickled.
            path = os.path.join(os.path.dirname(geoip2fast.__file__), _GEOIP2FAST_DATA_FILE)
            _geoip2fast = geoip2fast.GeoIP2Fast(verbose=False, geoip2fast_data_file=path)
        except Exception:
            _geoip2fast_failed = True
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        return _geoip2fast


def _english_name(record: Mapping[str, Any], key: str) -> str:
    """record[key]["names"]["en"] from a GeoIP2/GeoLite2 record, or ""."""
    value = record.get(key)
    names = value.get("names") if isinstance(value, Mapping) else None
    name = names.get("en") if isinstance(names, Mapping) else None
    return name.strip() if isinstance(name, str) else ""


class Locator:
    """Approximate location from an IP, read from local data only."""

    def __init__(self, mmdb_path: str | None = None):
        """Remember where the data is; open nothing until the first locate()."""
        self.mmdb_path = mmdb_path
        self._lock = threading.Lock()
        self._reader: Any = None
        self._reader_failed = False
        self._cached: Callable[[str], str] = functools.lru_cache(maxsize=_LOCATION_CACHE_SIZE)(
            self._lookup
        )

    def locate(self, ip: str) -> str:
        """A place to show next to a session: "Paris, France", "France", "This computer",
        "Local network" or "Unknown location".

        Never raises: a location is decoration, not worth failing a page for.
        """
        try:
            address = _parse_ip(ip)
            if address is None:
                return UNKNOWN_LOCATION
            if address.is_loopback:
                return THIS_COMPUTER
            if any(address in net for net in _LOCAL_NETWORKS if net.version == address.version):
                return LOCAL_NETWORK
            if (
                address.is_multicast
                or address.is_unspecified
                or address.is_reserved
                or address.is_private  # by now only documentation and other special ranges
            ):
                return UNKNOWN_LOCATION
            # Cached by normalised address, so the cache never holds client-chosen text.
            return self._cached(str(address))
        except Exception:
            return UNKNOWN_LOCATION

    def _lookup(self, ip: str) -> str:
        """The data's answer for a public address; failures are cached like answers."""
        try:
            if self.mmdb_path:
                return self._from_mmdb(ip)
            return self._from_geoip2fast(ip)
        except Exception:  # e.g. an IPv6 address against an IPv4-only database
            return UNKNOWN_LOCATION

    def _open_mmdb(self) -> Any:
        """Open the MaxMind DB once; a missing or broken file is not retried."""
        if self._reader is not None or self._reader_failed:
            return self._reader
        with self._lock:
            if self._reader is None and not self._reader_failed:
                try:
                    import maxminddb

                    self._reader = maxminddb.open_database(self.mmdb_path)
                except Exception:
                    self._reader_failed = True
        return self._reader

    def _from_mmdb(self, ip: str) -> str:
        reader = self._open_mmdb()
        if reader is None:
            return UNKNOWN_LOCATION
        record = reader.get(ip)
        if not isinstance(record, Mapping):
            return UNKNOWN_LOCATION
        city = _english_name(record, "city")
        country = _english_name(record, "country") or _english_name(record, "registered_country")
        return ", ".join(part for part in (city, country) if part) or UNKNOWN_LOCATION

    def _from_geoip2fast(self, ip: str) -> str:
        geo = _load_geoip2fast()
        if geo is None:
            return UNKNOWN_LOCATION
        result = geo.lookup(ip)
        code = str(getattr(result, "country_code", "") or "").strip()
        name = str(getattr(result, "country_name", "") or "").strip()
        if code in ("", "--") or not name or name.startswith("<") or result.is_private:
            return UNKNOWN_LOCATION
        return name
