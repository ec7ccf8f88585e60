"""Debian's nginx in front of the real gateway, with the shipped deploy/nginx/securemail.conf.

nginx runs unprivileged on free loopback ports with a trustme certificate; the site file is
the shipped one with only its paths and ports substituted (render() fails when one of them
is no longer in the file, so the test cannot drift from what operators install). The
client connects from 127.0.0.2, nginx reaches the gateway from 127.0.0.1, the gateway
trusts 127.0.0.1 as its proxy: the audit row must name 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from securemail.web.middleware import HEADERS
from tests.smtp_fixtures import free_port
from tests.web_fixtures import another_web

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "nginx" / "securemail.conf"
HSTS = "max-age=63072000; includeSubDomains"
CLIENT = "127.0.0.2"  # the "browser" host; nginx itself reaches the gateway from 127.0.0.1
pytestmark = pytest.mark.xdist_group("nginx")


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.skip("nginx is not installed (make test installs Debian's nginx)")
    return found


def render(site: str, *, http_port: int, https_port: int, app_port: int, prefix: Path) -> str:
    """The shipped site with test paths and ports; every substituted line must be there."""
    subs = [
        ("    listen 80;\n", f"    listen 127.0.0.1:{http_port};\n"),
        ("    listen [::]:80;\n", ""),
        ("    listen 443 ssl;\n", f"    listen 127.0.0.1:{https_port} ssl;\n"),
        ("    listen [::]:443 ssl;\n", ""),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{app_port};"),
        ("/etc/ssl/securemail/fullchain.pem", str(prefix / "cert.pem")),
        ("/etc/ssl/securemail/privkey.pem", str(prefix / "key.pem")),
        ("/var/log/nginx/securemail.access.log", str(prefix / "access.log")),
    ]
    for old, new in subs:
        assert old in site, f"{SITE} no longer contains {old!r}; update this test"
        site = site.replace(old, new)
    return site


def main_conf(prefix: Path) -> str:
    """What /etc/nginx/nginx.conf gives the site on Debian, minus root-only paths."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
{temp}
    include {prefix / "securemail.conf"};
}}
"""


@dataclass
class Nginx:
    prefix: Path
    http_port: int
    https_port: int
    cafile: str

    def command(self, binary: str, *args: str) -> list[str]:
        cmd = [
            binary,
            "-p",
            str(self.prefix),
            "-c",
            str(self.prefix / "nginx.conf"),
            "-e",
            str(self.prefix / "error.log"),
            *args,
        ]
        if os.geteuid() == 0:
            # Unprivileged, as the brief's CI runs as root: the whole nginx as nobody.
            cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
        return cmd


def prepare(app_port: int, ca: trustme.CA) -> Nginx:
    prefix = Path(tempfile.mkdtemp(prefix="sm-nginx-"))
    cert = ca.issue_cert("127.0.0.1", "localhost", "gateway.zorg.example")
    cert.private_key_pem.write_to_path(str(prefix / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(prefix / "cert.pem"))
    ca.cert_pem.write_to_path(str(prefix / "ca.pem"))
    n = Nginx(prefix, free_port(), free_port(), str(prefix / "ca.pem"))
    (prefix / "securemail.conf").write_text(
        render(
            SITE.read_text(encoding="utf-8"),
            http_port=n.http_port,
            https_port=n.https_port,
            app_port=app_port,
            prefix=prefix,
        )
    )
    (prefix / "nginx.conf").write_text(main_conf(prefix))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in [prefix, *prefix.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return n


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("nginx did not start listening")


@pytest.fixture
def tls_ca_nginx() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def nginx_config(tls_ca_nginx: trustme.CA) -> Iterator[Nginx]:
    n = prepare(free_port(), tls_ca_nginx)
    yield n
    shutil.rmtree(n.prefix, ignore_errors=True)


def test_nginx_accepts_the_shipped_site(nginx_config: Nginx):
    # nginx -t on the shipped file (paths and ports substituted): syntax, certificates, TLS.
    out = subprocess.run(
        nginx_config.command(nginx_binary(), "-t"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr
    assert "[warn]" not in out.stderr, out.stderr


@pytest.fixture
async def proxied(web_template, aiohttp_client, tls_ca_nginx):
    """The gateway (trusting 127.0.0.1 as its proxy) behind a running nginx."""
    binary = nginx_binary()
    async with another_web(
        web_template, aiohttp_client, web_settings={"trusted_proxies": "127.0.0.1"}
    ) as w:
        n = prepare(w.client.server.port, tls_ca_nginx)
        proc = subprocess.Popen(
            n.command(binary), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for_port(n.https_port, proc, n.prefix / "error.log")
            yield w, n
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            if proc.stderr is not None:
                proc.stderr.close()
            shutil.rmtree(n.prefix, ignore_errors=True)


def client_session(n: Nginx, *, tls: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
    ctx = tls or ssl.create_default_context(cafile=n.cafile)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(CLIENT, 0)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )


async def test_login_through_nginx_is_https_with_hsts_headers_and_the_client_address(proxied):
    w, n = proxied
    base = f"https://127.0.0.1:{n.https_port}"
    async with client_session(n) as http:
        # Given the login page over HTTPS through nginx,
        async with http.get(f"{base}/login", allow_redirects=False) as r:
            page = await r.text()
            assert r.status == 200
            # nginx adds HSTS; the gateway's own security headers pass through unchanged.
            assert r.headers.getall("Strict-Transport-Security") == [HSTS]
            for name, value in HEADERS.items():
                assert r.headers.get(name) == value, name
            assert "nginx/" not in r.headers.get("Server", "")
            # The gateway saw https (X-Forwarded-Proto from its trusted proxy): Secure cookies.
            cookies = r.headers.getall("Set-Cookie")
            assert cookies and all("Secure" in c for c in cookies)
        token = page.split('name="login_token" value="')[1].split('"')[0]
        # when someone tries a wrong password and forges X-Forwarded-For on the way,
        async with http.post(
            f"{base}/login",
            allow_redirects=False,
            headers={"X-Forwarded-For": "203.0.113.66"},
            data={"login_token": token, "username": "gp_a", "password": "wrong password"},
        ) as r:
            assert r.status == 401, (await r.text())[:300]
            assert r.headers.getall("Strict-Transport-Security") == [HSTS]
    # then the audit row names the real client (not nginx's 127.0.0.1, not the forgery).
    row = w.audit("auth.fail")[-1]
    assert row["user_name"] == "gp_a"
    assert row["access_point"] == CLIENT


async def test_plain_http_is_redirected_to_https_without_reaching_the_gateway(proxied):
    w, n = proxied
    before = len(w.audit("auth.fail"))
    async with client_session(n) as http:
        async with http.get(
            f"http://127.0.0.1:{n.http_port}/login?next=/requests", allow_redirects=False
        ) as r:
            assert r.status == 301
            assert r.headers["Location"] == "https://127.0.0.1/login?next=/requests"
        async with http.post(
            f"http://127.0.0.1:{n.http_port}/login",
            allow_redirects=False,
            data={"username": "gp_a", "password": "wrong password"},
        ) as r:
            assert r.status == 301
    assert len(w.audit("auth.fail")) == before


async def test_nginx_refuses_tls_below_1_2(proxied):
    _, n = proxied
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(n.cafile)
    with warnings.catch_warnings():
        # An outdated client on purpose: Python rightly warns about TLS 1.0/1.1.
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 at all
        with (
            socket.create_connection(("127.0.0.1", n.https_port), timeout=10) as raw,
            pytest.raises(ssl.SSLError) as err,
        ):
            old.wrap_socket(raw, server_hostname="127.0.0.1")
    # nginx answered with a protocol_version alert (not a client that refused to try).
    assert "ALERT_PROTOCOL_VERSION" in str(err.value), err.value
    modern = ssl.create_default_context(cafile=n.cafile)
    with (
        socket.create_connection(("127.0.0.1", n.https_port), timeout=10) as raw,
        modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}


async def test_access_log_keeps_no_query_string(proxied):
    _, n = proxied
    async with (
        client_session(n) as http,
        http.get(f"https://127.0.0.1:{n.https_port}/login?naam=Jansen") as r,
    ):
        assert r.status == 200
    # nginx writes the line when it finalises the request, which may be just after the
    # client has read the response: wait for it rather than read a moment too early.
    path = n.prefix / "access.log"
    deadline = time.monotonic() + 10
    while "GET /login HTTP" not in (log := path.read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "GET /login HTTP" in log
    assert "Jansen" not in log and "naam=" not in log
