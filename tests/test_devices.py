"""Device labels, client IPs and locations as shown on the login-sessions page.

Everything here is local: user agents are parsed in-process and locations come
from geoip2fast's bundled data or a tiny MaxMind DB file written by the test.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from idp.devices import (
    MAX_USER_AGENT_LENGTH,
    Device,
    Locator,
    client_ip,
    describe,
    truncate_user_agent,
)

CHROME_MACOS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
CHROME_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"
)
EDGE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80"
)
CHROME_CHROMEOS = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.6367.78 Mobile Safari/537.36 "
    "(compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
)


# --------------------------------------------------------------------------- describe


def test_chrome_on_macos_is_a_desktop():
    assert describe(CHROME_MACOS) == Device(
        browser="Chrome", os="macOS", device_type="desktop", label="Chrome on macOS"
    )


def test_safari_on_iphone_is_named_after_the_phone():
    assert describe(SAFARI_IPHONE) == Device(
        browser="Safari", os="iOS", device_type="mobile", label="Safari on iPhone"
    )


def test_firefox_on_windows_is_a_desktop():
    assert describe(FIREFOX_WINDOWS) == Device(
        browser="Firefox", os="Windows", device_type="desktop", label="Firefox on Windows"
    )


def test_chrome_on_android_phone_is_mobile_and_called_chrome():
    assert describe(CHROME_ANDROID) == Device(
        browser="Chrome", os="Android", device_type="mobile", label="Chrome on Android"
    )


def test_ipad_is_a_tablet_named_after_the_ipad():
    assert describe(SAFARI_IPAD) == Device(
        browser="Safari", os="iOS", device_type="tablet", label="Safari on iPad"
    )


def test_chrome_on_iphone_is_called_chrome_not_chrome_mobile_ios():
    assert describe(CHROME_IPHONE).label == "Chrome on iPhone"


def test_edge_is_not_mistaken_for_chrome():
    assert describe(EDGE_WINDOWS).label == "Edge on Windows"


def test_chrome_os_is_spelled_chromeos():
    device = describe(CHROME_CHROMEOS)
    assert device.os == "ChromeOS"
    assert device.label == "Chrome on ChromeOS"


def test_googlebot_is_a_bot_labelled_by_name():
    assert describe(GOOGLEBOT) == Device(
        browser="Googlebot", os="Unknown OS", device_type="bot", label="Googlebot"
    )


def test_googlebot_pretending_to_be_a_phone_is_still_a_bot():
    assert describe(GOOGLEBOT_SMARTPHONE).device_type == "bot"


def test_curl_is_named_and_typed_other():
    assert describe("curl/8.0.1") == Device(
        browser="curl", os="Unknown OS", device_type="other", label="curl"
    )


def test_http_library_unknown_to_the_parser_is_named_by_its_product_token():
    device = describe("python-httpx/0.28.1")
    assert device.browser == "python-httpx"
    assert device.label == "python-httpx"
    assert device.device_type == "other"


@pytest.mark.parametrize("user_agent", [None, "", "   ", "\x00\x01\x02", "???", "Mozilla/5.0"])
def test_missing_or_meaningless_user_agent_is_unknown_browser(user_agent):
    device = describe(user_agent)
    assert device.label == "Unknown browser"
    assert device.browser == "Unknown browser"
    assert device.os == "Unknown OS"
    assert device.device_type == "other"


def test_non_string_user_agent_does_not_crash():
    assert describe(12345).label == "Unknown browser"  # type: ignore[arg-type]


def test_huge_user_agent_does_not_crash():
    device = describe(CHROME_MACOS + "A" * 100_000)
    assert device.label == "Chrome on macOS"
    assert describe("A" * 100_000).label == "Unknown browser"


def test_script_tag_in_user_agent_is_kept_as_plain_text_for_the_template_to_escape():
    user_agent = "Mozilla/5.0 <script>alert(1)</script>"
    assert truncate_user_agent(user_agent) == user_agent
    device = describe(user_agent)
    assert device.label == "Unknown browser"
    assert not any("&lt;" in field for field in (device.browser, device.os, device.label))


def test_script_tag_inside_a_real_user_agent_does_not_hide_the_browser():
    user_agent = (
        "Mozilla/5.0 (Windows NT 10.0; <script>alert(1)</script>) Gecko/20100101 Firefox/125.0"
    )
    assert describe(user_agent).label == "Firefox on Windows"


def test_describe_is_cached_for_repeated_user_agents():
    assert describe(FIREFOX_WINDOWS) is describe(FIREFOX_WINDOWS)


# --------------------------------------------------------------------------- truncate_user_agent


def test_truncate_user_agent_turns_none_into_empty_text():
    assert truncate_user_agent(None) == ""


def test_truncate_user_agent_keeps_normal_user_agents_whole():
    assert truncate_user_agent(CHROME_MACOS) == CHROME_MACOS


def test_truncate_user_agent_cuts_100_kb_to_the_limit():
    assert MAX_USER_AGENT_LENGTH == 512
    assert truncate_user_agent("x" * 100_000) == "x" * MAX_USER_AGENT_LENGTH


def test_truncate_user_agent_drops_characters_a_database_would_reject():
    assert truncate_user_agent("curl/8.0\x00evil") == "curl/8.0evil"
    assert truncate_user_agent("curl/8.0 \udcff").encode("utf-8") == b"curl/8.0 ?"


# --------------------------------------------------------------------------- client_ip


def test_without_trusted_proxies_the_socket_address_is_the_client():
    assert client_ip("203.0.113.7", "198.51.100.1", 0) == "203.0.113.7"


def test_one_trusted_proxy_gives_the_rightmost_forwarded_address():
    assert client_ip("10.0.0.2", "198.51.100.1, 203.0.113.7", 1) == "203.0.113.7"


def test_two_trusted_proxies_give_the_second_address_from_the_right():
    assert client_ip("10.0.0.2", "203.0.113.7, 10.0.0.9", 2) == "203.0.113.7"


def test_spoofed_entries_left_of_the_trusted_ones_are_ignored():
    header = "1.2.3.4, 5.6.7.8, 203.0.113.7, 10.0.0.9"
    assert client_ip("10.0.0.2", header, 2) == "203.0.113.7"


def test_header_shorter_than_the_proxy_chain_falls_back_to_the_socket_address():
    assert client_ip("10.0.0.2", "203.0.113.7", 2) == "10.0.0.2"


def test_missing_header_falls_back_to_the_socket_address():
    assert client_ip("10.0.0.2", None, 1) == "10.0.0.2"


@pytest.mark.parametrize("header", ["garbage", "", " , ", "999.1.1.1", "<script>", "x" * 10_000])
def test_unparsable_header_falls_back_to_the_socket_address(header):
    assert client_ip("10.0.0.2", header, 1) == "10.0.0.2"


def test_ipv6_addresses_are_normalised():
    assert client_ip("2001:DB8:0:0::1", None, 0) == "2001:db8::1"
    assert client_ip("10.0.0.2", "2001:db8::7, 2001:0DB8::0001", 1) == "2001:db8::1"


def test_ipv4_mapped_ipv6_socket_address_is_shown_as_ipv4():
    assert client_ip("::ffff:203.0.113.7", None, 0) == "203.0.113.7"


def test_forwarded_addresses_with_ports_are_accepted():
    assert client_ip("10.0.0.2", "203.0.113.7:51234", 1) == "203.0.113.7"
    assert client_ip("10.0.0.2", "[2001:db8::1]:443", 1) == "2001:db8::1"


@pytest.mark.parametrize("remote_addr", [None, "", "not an ip"])
def test_no_usable_address_at_all_is_unknown(remote_addr):
    assert client_ip(remote_addr, None, 0) == "unknown"
    assert client_ip(remote_addr, "garbage", 1) == "unknown"


# --------------------------------------------------------------------------- Locator (bundled data)


@pytest.fixture(scope="module")
def locator() -> Locator:
    return Locator()


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_is_this_computer(locator, ip):
    assert locator.locate(ip) == "This computer"


@pytest.mark.parametrize(
    "ip", ["10.1.2.3", "172.16.0.5", "192.168.1.20", "169.254.1.1", "fd00::1", "fe80::1"]
)
def test_private_and_link_local_addresses_are_the_local_network(locator, ip):
    assert locator.locate(ip) == "Local network"


@pytest.mark.parametrize("ip", ["garbage", "", "999.1.1.1", "<script>", "x" * 10_000])
def test_unparsable_ip_is_unknown_location(locator, ip):
    assert locator.locate(ip) == "Unknown location"


def test_unknown_client_ip_is_unknown_location(locator):
    assert locator.locate(client_ip(None, None, 0)) == "Unknown location"


@pytest.mark.parametrize("ip", ["0.0.0.0", "192.0.2.1", "224.0.0.1", "2001:db8::1"])
def test_special_purpose_addresses_are_unknown_location(locator, ip):
    assert locator.locate(ip) == "Unknown location"


def test_well_known_public_ipv4_address_gets_its_country(locator):
    assert locator.locate("8.8.8.8") == "United States"


def test_another_public_address_gets_some_country(locator):
    place = locator.locate("1.1.1.1")
    assert isinstance(place, str)
    assert place
    assert place != "Unknown location"


def test_public_ipv6_address_gets_its_country(locator):
    assert locator.locate("2001:4860:4860::8888") == "United States"


def test_first_lookups_from_many_threads_agree():
    fresh = Locator()
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(fresh.locate("8.8.8.8"))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["United States"] * 8


# --------------------------------------------------------------------------- Locator (mmdb)


def test_creating_a_locator_with_a_missing_mmdb_opens_nothing_and_does_not_raise(tmp_path):
    Locator(str(tmp_path / "missing.mmdb"))


def test_missing_mmdb_gives_unknown_location_for_public_ips(tmp_path):
    missing = Locator(str(tmp_path / "missing.mmdb"))
    assert missing.locate("8.8.8.8") == "Unknown location"
    assert missing.locate("8.8.8.8") == "Unknown location"


def test_missing_mmdb_still_recognises_loopback_and_local_networks(tmp_path):
    missing = Locator(str(tmp_path / "missing.mmdb"))
    assert missing.locate("127.0.0.1") == "This computer"
    assert missing.locate("192.168.1.1") == "Local network"


def test_corrupt_mmdb_gives_unknown_location(tmp_path):
    path = tmp_path / "corrupt.mmdb"
    path.write_bytes(b"not a maxmind database" * 100)
    assert Locator(str(path)).locate("8.8.8.8") == "Unknown location"


def _mmdb_uint(bits: int, number: int) -> bytes:
    """An unsigned integer of the exact type libmaxminddb insists on in metadata."""
    payload = number.to_bytes(bits // 8, "big").lstrip(b"\x00")
    if bits == 64:  # extended type 9: type bits 0, then a byte holding 9 - 7
        return bytes([len(payload), 9 - 7]) + payload
    return bytes([({16: 5, 32: 6}[bits] << 5) | len(payload)]) + payload


def _mmdb_value(value: object) -> bytes:
    """Encode a str, bytes (already encoded), int (uint32), list or dict in the MaxMind DB
    data format."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):  # extended type 11: type bits 0, then a byte holding 11 - 7
        assert len(value) < 29
        return bytes([len(value), 11 - 7]) + b"".join(_mmdb_value(v) for v in value)
    if isinstance(value, dict):
        head, size = 7, len(value)
        payload = b"".join(_mmdb_value(k) + _mmdb_value(v) for k, v in value.items())
    elif isinstance(value, str):
        payload = value.encode("utf-8")
        head, size = 2, len(payload)
    elif isinstance(value, int):
        return _mmdb_uint(32, value)
    else:
        raise TypeError(value)
    assert size < 29
    return bytes([(head << 5) | size]) + payload


def _write_mmdb(path: Path, left_left: dict, left_right: dict) -> None:
    """A two-node IPv4 database: 0.0.0.0/2 -> left_left, 64.0.0.0/2 -> left_right,
    128.0.0.0/1 -> no data. Enough to exercise the real reader on real records."""
    node_count = 2
    first = _mmdb_value(left_left)
    data = first + _mmdb_value(left_right)

    def pointer(offset: int) -> int:
        return node_count + 16 + offset

    def node(left: int, right: int) -> bytes:
        return left.to_bytes(3, "big") + right.to_bytes(3, "big")

    tree = node(1, node_count) + node(pointer(0), pointer(len(first)))
    metadata = {
        "node_count": _mmdb_uint(32, node_count),
        "record_size": _mmdb_uint(16, 24),
        "ip_version": _mmdb_uint(16, 4),
        "database_type": "Test-City",
        "languages": ["en"],
        "binary_format_major_version": _mmdb_uint(16, 2),
        "binary_format_minor_version": _mmdb_uint(16, 0),
        "build_epoch": _mmdb_uint(64, 1_700_000_000),
        "description": {"en": "test"},
    }
    marker = b"\xab\xcd\xefMaxMind.com"
    path.write_bytes(tree + b"\x00" * 16 + data + marker + _mmdb_value(metadata))


def _names(en: str) -> dict:
    return {"names": {"en": en}}


def test_mmdb_with_city_and_country_gives_city_comma_country(tmp_path):
    path = tmp_path / "city.mmdb"
    _write_mmdb(
        path,
        left_left={"country": _names("United States")},
        left_right={"city": _names("Paris"), "country": _names("France")},
    )
    located = Locator(str(path))
    assert located.locate("81.2.69.142") == "Paris, France"
    assert located.locate("8.8.8.8") == "United States"


def test_mmdb_is_opened_on_first_lookup_not_when_the_locator_is_made(tmp_path):
    path = tmp_path / "later.mmdb"
    located = Locator(str(path))
    _write_mmdb(
        path,
        left_left={"country": _names("United States")},
        left_right={"city": _names("Paris"), "country": _names("France")},
    )
    assert located.locate("81.2.69.142") == "Paris, France"


def test_mmdb_record_with_only_a_registered_country_gives_that_country(tmp_path):
    path = tmp_path / "country.mmdb"
    _write_mmdb(path, left_left={"registered_country": _names("Germany")}, left_right={})
    assert Locator(str(path)).locate("8.8.8.8") == "Germany"


def test_mmdb_without_a_record_gives_unknown_location(tmp_path):
    path = tmp_path / "city.mmdb"
    _write_mmdb(path, left_left={"country": _names("United States")}, left_right={})
    located = Locator(str(path))
    assert located.locate("200.1.1.1") == "Unknown location"
    assert located.locate("81.2.69.142") == "Unknown location"


def test_ipv6_lookup_in_an_ipv4_only_mmdb_gives_unknown_location(tmp_path):
    path = tmp_path / "city.mmdb"
    _write_mmdb(path, left_left={"country": _names("United States")}, left_right={})
    assert Locator(str(path)).locate("2001:4860:4860::8888") == "Unknown location"
