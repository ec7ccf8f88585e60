"""Behind a reverse proxy: X-Forwarded-For/-Proto count only from a trusted proxy.

The resolve() rules as plain functions (with hypothesis), the setting's validation, and the
real app over real HTTP: the audit row's source address and the cookies' Secure flag
follow the forwarded headers from a listed proxy and ignore them from anyone else.
"""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemail import config
from securemail.config import parse_trusted
from securemail.errors import ConfigError
from securemail.web.forwarded import _address, resolve
from tests.auth_fixtures import PASSWORD
from tests.web_fixtures import Browser, WebApp, another_web

LOCAL = parse_trusted("127.0.0.1, ::1")
TWO = parse_trusted("127.0.0.1, 10.0.0.0/8")


# -- the rules ---------------------------------------------------------------------------------


def test_resolve_untrusted_peer_ignores_forwarded_headers():
    o = resolve("192.0.2.10", "http", "203.0.113.9", "https", LOCAL)
    assert (o.address, o.scheme) == ("192.0.2.10", "http")


def test_resolve_empty_trust_list_ignores_forwarded_headers_even_from_loopback():
    o = resolve("127.0.0.1", "http", "203.0.113.9", "https", ())
    assert (o.address, o.scheme) == ("127.0.0.1", "http")


def test_resolve_trusted_peer_gives_the_client_and_scheme():
    o = resolve("127.0.0.1", "http", "198.51.100.7", "https", LOCAL)
    assert (o.address, o.scheme) == ("198.51.100.7", "https")


def test_resolve_takes_the_rightmost_untrusted_hop_not_a_forged_leftmost():
    # The client wrote "203.0.113.9" itself; the proxies appended the real address.
    o = resolve("127.0.0.1", "http", "203.0.113.9, 198.51.100.7, 10.1.2.3", "https", TWO)
    assert o.address == "198.51.100.7"


def test_resolve_all_hops_trusted_gives_the_leftmost():
    assert resolve("127.0.0.1", "http", "10.0.0.5, 10.0.0.6", None, TWO).address == "10.0.0.5"


def test_resolve_garbled_hop_stops_at_the_last_readable_one():
    o = resolve("127.0.0.1", "http", "<script>, 10.0.0.6", None, TWO)
    assert o.address == "10.0.0.6"
    assert resolve("127.0.0.1", "http", "not-an-ip", None, LOCAL).address == "127.0.0.1"


def test_resolve_ipv6_and_bracketed_forms():
    assert resolve("::1", "http", "2001:db8::7", None, LOCAL).address == "2001:db8::7"
    assert resolve("::1", "http", "[2001:db8::7]:4711", None, LOCAL).address == "2001:db8::7"
    # An IPv4 peer seen on a dual-stack socket as ::ffff:127.0.0.1 is the same peer.
    assert resolve("::ffff:127.0.0.1", "http", "198.51.100.7", None, LOCAL).address == (
        "198.51.100.7"
    )


def test_resolve_unknown_proto_keeps_the_transport_scheme():
    assert resolve("127.0.0.1", "http", None, "gopher", LOCAL).scheme == "http"
    assert resolve("127.0.0.1", "http", None, "http, https", LOCAL).scheme == "https"


def test_resolve_overlong_header_is_not_believed():
    o = resolve("127.0.0.1", "http", "198.51.100.7," * 400, None, LOCAL)
    assert o.address == "127.0.0.1"


ips = st.ip_addresses().map(str)
hops = st.one_of(ips, st.sampled_from(["10.0.0.1", "127.0.0.1", "::1"]), st.text(max_size=12))


def _trusted(text: str) -> bool:
    addr = _address(text)
    return addr is not None and any(addr.version == n.version and addr in n for n in TWO)


@given(
    peer=st.one_of(ips, st.just("127.0.0.1")),
    chain=st.lists(hops, max_size=6),
    proto=st.text(max_size=12),
)
def test_resolve_never_answers_with_a_hop_left_of_an_untrusted_one(peer, chain, proto):
    """Whatever the headers say, the answer is the TCP peer or a hop at or right of the
    rightmost hop that is not a trusted proxy: nothing an untrusted party wrote."""
    header = ", ".join(chain)
    o = resolve(peer, "http", header, proto, TWO)
    assert o.scheme in {"http", "https"}
    if not _trusted(peer):
        assert (o.address, o.scheme) == (peer, "http")
        return
    parts = header.split(",")
    k = max((i for i, h in enumerate(parts) if not _trusted(h)), default=0)
    allowed = {str(_address(peer))} | {str(_address(h)) for h in parts[k:] if _address(h)}
    assert o.address in allowed


@given(st.text(max_size=30).filter(lambda t: t.strip() and "," not in t))
def test_parse_trusted_refuses_what_is_not_an_address(text):
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        with pytest.raises(ConfigError) as err:
            parse_trusted(text)
        assert "trusted_proxies" in err.value.reason


def test_config_refuses_a_bad_trusted_proxy_naming_the_entry(tmp_path):
    (tmp_path / "securemail.toml").write_text('[web]\ntrusted_proxies = "127.0.0.1, nginx"\n')
    with pytest.raises(ConfigError) as err:
        config.load(tmp_path, env={})
    assert "'nginx'" in err.value.reason
    env = {"SECUREMAIL_WEB_TRUSTED_PROXIES": "127.0.0.1,::1"}
    (tmp_path / "securemail.toml").write_text("")
    assert config.load(tmp_path, env=env).web.trusted_proxies == "127.0.0.1,::1"


# -- the real app over real HTTP ----------------------------------------------------------------


def browser_from(w: WebApp, source: str) -> Browser:
    """A browser whose TCP connection comes from another loopback address (a second host)."""
    session = aiohttp.ClientSession(
        base_url=str(w.client.make_url("/")),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(local_addr=(source, 0)),
    )
    b = Browser(w, session)
    w.browsers.append(b)
    return b


FORGED = {"X-Forwarded-For": "203.0.113.66", "X-Forwarded-Proto": "https"}


async def _failed_login(b: Browser, username: str, headers: dict[str, str]) -> None:
    page = await b.get("/login", headers=headers)
    # Over plain HTTP the client keeps a Secure cookie to itself; hand it over as a browser
    # would over TLS.
    headers = {**headers, "Cookie": f"securemail_login={page.field('login_token')}"}
    r = await b.request(
        "POST",
        "/login",
        headers=headers,
        data={
            "login_token": page.field("login_token"),
            "username": username,
            "password": "wrong password",
        },
    )
    assert r.status == 401, r.text[:300]


async def test_forged_forwarded_for_is_ignored_without_trusted_proxies(webapp):
    # Given the default (no trusted proxies), when a client sends X-Forwarded-For itself,
    b = webapp.browser()
    await _failed_login(b, "gp_a", FORGED)
    # then the audit row names the TCP peer, and the cookie is not marked Secure over http.
    row = webapp.audit("auth.fail")[-1]
    assert row["access_point"] == "127.0.0.1"
    page = await b.get("/login", headers=FORGED)
    assert all("Secure" not in c for c in page.set_cookies())


async def test_forged_forwarded_for_from_an_untrusted_peer_is_ignored(web_template, aiohttp_client):
    async with another_web(
        web_template, aiohttp_client, web_settings={"trusted_proxies": "127.0.0.1"}
    ) as w:
        b = browser_from(w, "127.0.0.2")  # not the listed proxy
        await _failed_login(b, "gp_a", FORGED)
        assert w.audit("auth.fail")[-1]["access_point"] == "127.0.0.2"
        page = await b.get("/login", headers=FORGED)
        assert all("Secure" not in c for c in page.set_cookies())


async def test_trusted_proxy_forwards_client_address_and_https(web_template, aiohttp_client):
    async with another_web(
        web_template, aiohttp_client, web_settings={"trusted_proxies": "127.0.0.1"}
    ) as w:
        b = w.browser()  # connects from 127.0.0.1: the listed proxy
        proxied = {"X-Forwarded-For": "203.0.113.66, 198.51.100.7", "X-Forwarded-Proto": "https"}
        page = await b.get("/login", headers=proxied)
        assert page.set_cookies() and all("Secure" in c for c in page.set_cookies())
        await _failed_login(b, "gp_a", proxied)
        assert w.audit("auth.fail")[-1]["access_point"] == "198.51.100.7"
        # The session cookie of a successful password step is Secure too.
        page = await b.get("/login", headers=proxied)
        token = page.field("login_token")
        r = await b.request(
            "POST",
            "/login",
            headers={**proxied, "Cookie": f"securemail_login={token}"},
            data={"login_token": token, "username": "gp_a", "password": PASSWORD},
        )
        (cookie,) = [c for c in r.set_cookies() if c.startswith("securemail_session=")]
        assert "Secure" in cookie
        # The proxy said plain http: no Secure flag (the [web] secure_cookies default).
        page = await b.get(
            "/login", headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "http"}
        )
        assert all("Secure" not in c for c in page.set_cookies())
