"""The files in deploy/: what can be checked without systemd or Postfix running.

- the systemd units pass ``systemd-analyze verify`` and keep the hardening the gateway
  promises (static checks, plus ``systemd-analyze security`` where this systemd has
  ``--offline``); with no systemd running here, tests/unit_sandbox.py loads the unit's
  seccomp filters (SystemCallFilter, RestrictAddressFamilies, MemoryDenyWriteExecute) with
  libseccomp, and init, check and a whole send run under them;
- the nginx site says what docs/operations.md promises (its live test: tests/e2e/test_nginx.py);
- the Postfix example enforces TLS on both hops, and its [smtp] counterpart, with a
  certificate made by the shipped script, really gets the gateway a verified STARTTLS
  session (aiosmtpd stands in for Postfix: no MTA is installed for a test).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from securemail import config
from securemail.delivery import relay
from tests.smtp_fixtures import RecordingHandler, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ("securemail.service", "securemail-keys-check.service", "securemail-keys-check.timer")
INSTALLED = "/opt/securemail/.venv/bin/securemail"
VENV_SECUREMAIL = Path(sys.executable).parent / "securemail"


def unit(name: str) -> dict[str, list[str]]:
    """directive -> values, over all sections (the units use each name in one section)."""
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return found


@pytest.fixture
def units_here(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this checkout's venv (verify wants the binary)."""
    assert VENV_SECUREMAIL.exists(), VENV_SECUREMAIL
    for name in UNITS:
        text = (DEPLOY / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED, str(VENV_SECUREMAIL)))
    return tmp_path


# -- systemd -----------------------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(units_here: Path):
    out = subprocess.run(
        [systemd_analyze(), "verify", *(str(units_here / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_service_exposure_is_low_by_systemd_analyze_security(units_here: Path):
    binary = systemd_analyze()
    for name in ("securemail.service", "securemail-keys-check.service"):
        out = subprocess.run(
            [binary, "security", "--offline=true", "--no-pager", str(units_here / name)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if "--offline" in out.stderr and out.returncode != 0:
            pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
        assert m, out.stdout + out.stderr
        # 0 is a fully locked-down unit, 10 an unconfined one; what is left open is the
        # network (the relay), AF_UNIX (gpg-agent) and other users' view (see the unit).
        assert float(m.group(1)) <= 2.0, out.stdout


@pytest.mark.parametrize("name", ["securemail.service", "securemail-keys-check.service"])
def test_unit_keeps_the_promised_hardening(name: str):
    d = unit(name)
    one = {k: v[-1] for k, v in d.items()}
    assert one["User"] == one["Group"] == "securemail"
    assert one["ProtectSystem"] == "strict"
    assert d["ReadWritePaths"] == ["/var/lib/securemail"]  # state only under the home
    for key in (
        "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
        "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "LockPersonality",
        "MemoryDenyWriteExecute", "RestrictSUIDSGID", "RestrictNamespaces", "RestrictRealtime",
    ):  # fmt: skip
        assert one[key] == "yes", key
    assert one["CapabilityBoundingSet"] == ""
    assert one["UMask"] == "0077"
    assert one["LimitCORE"] == "0"
    # gpg-agent's socket is AF_UNIX; nothing beyond it and TCP/IP.
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "--home /var/lib/securemail" in one["ExecStart"]
    assert one["ExecStart"].startswith(INSTALLED + " ")


def test_service_starts_only_after_the_checks_and_stops_gently():
    one = {k: v[-1] for k, v in unit("securemail.service").items()}
    assert one["ExecStartPre"] == f"{INSTALLED} check --home /var/lib/securemail"
    assert one["ExecStart"] == f"{INSTALLED} serve --home /var/lib/securemail"
    assert one["KillSignal"] == "SIGTERM"
    assert one["KillMode"] == "mixed"
    assert one["Restart"] == "on-failure"
    assert int(one["TimeoutStopSec"]) > int(config.SmtpSettings().timeout_seconds)
    timer = {k: v[-1] for k, v in unit("securemail-keys-check.timer").items()}
    assert timer["Persistent"] == "true"


def syscall_groups(binary: str) -> dict[str, list[str]]:
    """systemd-analyze syscall-filter: every @group with its members (calls and @groups)."""
    out = subprocess.run(
        [binary, "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(groups: dict[str, list[str]], name: str) -> set[str]:
    if not name.startswith("@"):
        return {name}
    calls: set[str] = set()
    for member in groups[name]:
        calls |= expand(groups, member)
    return calls


def allowed_calls(groups: dict[str, list[str]], filters: list[str]) -> set[str]:
    """systemd's reading of SystemCallFilter= lines: an allow-list, then "~" removals."""
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names = set().union(*(expand(groups, n) for n in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Run a command under the unit's seccomp confinement (tests/unit_sandbox.py)."""
    groups = syscall_groups(systemd_analyze())
    allowed = allowed_calls(groups, unit("securemail.service")["SystemCallFilter"])
    assert {"execve", "socket", "mmap", "mprotect"} <= allowed
    assert not {"swapoff", "reboot", "setrlimit", "setuid"} & allowed
    path = tmp_path_factory.mktemp("seccomp") / "syscalls.txt"
    path.write_text("\n".join(sorted(allowed)) + "\n")

    def run(*command: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "unit_sandbox.py"), str(path), "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if out.returncode == 77:
            pytest.skip("libseccomp is not installed (Debian package libseccomp2)")
        return out

    return run


PROBE = """
import ctypes, errno, mmap, os, socket
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx-allowed")
except PermissionError:
    print("wx-denied")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    print("netlink-allowed")
except OSError as exc:
    print("netlink-denied" if exc.errno == errno.EAFNOSUPPORT else f"netlink-{exc.errno}")
a, b = socket.socketpair(socket.AF_UNIX)
print("unix-ok")
libc = ctypes.CDLL(None, use_errno=True)
libc.swapoff(b"/nonexistent-securemail")
print("swapoff-" + errno.errorcode[ctypes.get_errno()])
print("umask-%o" % os.umask(0))
"""


def test_sandbox_really_confines(sandbox):
    # The emulation itself, negative: W+X memory, a netlink socket and a system call outside
    # @system-service are refused; AF_UNIX works; umask 0077.
    out = sandbox(sys.executable, "-c", PROBE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines == [
        "wx-denied", "netlink-denied", "unix-ok", "swapoff-EPERM", "umask-77"
    ], out.stdout  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gateway_init_and_check_run_under_the_units_system_call_confinement(sandbox):
    # securemail init makes the gateway's key with gpg and gpg-agent (AF_UNIX socket in the
    # home); check reads the database and verifies the audit chain (cryptography): all of it
    # under the unit's SystemCallFilter, RestrictAddressFamilies, MemoryDenyWriteExecute,
    # NoNewPrivileges, UMask and LimitCORE.
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="sm-unit-")) / "home"
    try:
        out = sandbox(str(VENV_SECUREMAIL), "init", "--home", str(home))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "gateway key" in out.stdout
        out = sandbox(str(VENV_SECUREMAIL), "check", "--home", str(home))
        assert out.returncode == 0, out.stdout + out.stderr
        out = sandbox(str(VENV_SECUREMAIL), "audit", "checkpoint", "--home", str(home))
        assert out.returncode == 0, out.stdout + out.stderr
        # UMask=0077: nothing the gateway made is readable by another user.
        for path in [home, *home.rglob("*")]:
            if path.is_symlink() or path.is_socket():
                continue
            assert path.stat().st_mode & 0o077 == 0, path
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(home / "gnupg"), "--kill", "all"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(home.parent, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_whole_send_runs_under_the_units_system_call_confinement(sandbox):
    """The GP's signature through gpg-agent, sealing to the team, delivery over STARTTLS and
    the nurse's decryption: the e2e send tests, run in a pytest process confined like the
    service (its own short --basetemp: gpg-agent's socket path is limited, and it must not
    touch this run's temporary folders)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="sm-b-"))
    try:
        out = sandbox(
            sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "--basetemp", str(base / "t"),
            str(ROOT / "tests" / "e2e" / "test_send_path.py"),
            "-k", "test_cli_send_arrives_encrypted_signed_and_neutral"
            " or test_send_with_api_function_records_audit_rows",
            timeout=900,
        )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout


# -- nginx (static; the live test is tests/e2e/test_nginx.py) ---------------------------------


def test_nginx_site_promises():
    site = (DEPLOY / "nginx" / "securemail.conf").read_text(encoding="utf-8")
    directives = [
        line.strip()
        for line in site.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in directives
    assert (
        'add_header Strict-Transport-Security "max-age=63072000; includeSubDomains" always;'
        in directives
    )
    assert "return 301 https://$host$request_uri;" in directives
    for header in ("Host $host", "X-Forwarded-For $remote_addr", "X-Forwarded-Proto $scheme"):
        assert f"proxy_set_header {header};" in directives
    assert "server 127.0.0.1:8080;" in directives  # the gateway only on loopback
    ciphers = next(d for d in directives if d.startswith("ssl_ciphers "))
    assert all(
        c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c)
        for c in ciphers.removeprefix("ssl_ciphers ").rstrip(";").split(":")
    )
    # Body buffer as large as the body limit: POST data never spills to disk.
    assert "client_max_body_size 2m;" in directives
    assert "client_body_buffer_size 2m;" in directives
    assert "proxy_buffering off;" in directives
    # Access log without query strings ($uri, never $request or $request_uri).
    log_format = site[site.index("log_format") : site.index(";", site.index("log_format"))]
    assert "$uri" in log_format
    assert "$request " not in log_format and "$request_uri" not in log_format
    assert "$args" not in log_format and "$query_string" not in log_format


# -- Postfix -----------------------------------------------------------------------------------


def main_cf() -> dict[str, str]:
    """Postfix main.cf as Postfix reads it: name = value, continuation lines indented."""
    out: dict[str, str] = {}
    last = ""
    for raw in (DEPLOY / "postfix" / "main.cf").read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            out[last] += " " + raw.strip()
            continue
        key, sep, value = raw.partition("=")
        assert sep, f"not a main.cf line: {raw!r}"
        last = key.strip()
        assert last not in out, f"{last} set twice"
        out[last] = value.strip()
    return out


def test_postfix_enforces_tls_on_both_hops_and_relays_only_the_gateway():
    cf = main_cf()
    # Next hop: TLS with a verified certificate, or no delivery.
    assert cf["smtp_tls_security_level"] in {"secure", "verify"}
    assert cf["smtp_tls_CAfile"]
    assert cf["relayhost"].startswith("[")  # a fixed smarthost, no MX lookup
    assert cf["smtp_tls_mandatory_protocols"] == ">=TLSv1.2"
    assert cf["smtp_sasl_tls_security_options"] == "noanonymous"  # AUTH only inside TLS
    # From the gateway: loopback only, STARTTLS required before anything else.
    assert cf["inet_interfaces"] == "loopback-only"
    assert cf["smtpd_tls_security_level"] == "encrypt"
    assert cf["smtpd_tls_auth_only"] == "yes"
    assert cf["smtpd_tls_mandatory_protocols"] == ">=TLSv1.2"
    assert cf["mynetworks"] == "127.0.0.0/8"
    assert cf["smtpd_relay_restrictions"] == "permit_mynetworks, reject"
    assert cf["mydestination"] == ""


def test_gateway_smtp_example_matches_the_postfix_listener(tmp_path: Path):
    cf = main_cf()
    (tmp_path / "securemail.toml").write_text(
        (DEPLOY / "postfix" / "securemail-smtp.toml").read_text(encoding="utf-8")
    )
    s = config.load(tmp_path, env={}).smtp
    assert s.starttls == "required"
    assert s.host == "127.0.0.1"
    assert s.cafile == cf["smtpd_tls_cert_file"]


async def test_postfix_recipe_gives_the_gateway_a_verified_starttls_session(tmp_path: Path):
    """The shipped cert script + the shipped [smtp] section against a STARTTLS-only server
    with that certificate (aiosmtpd standing in for the loopback Postfix)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    tls_dir = tmp_path / "tls"
    subprocess.run(
        ["sh", str(DEPLOY / "postfix" / "make-loopback-cert.sh"), str(tls_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (tls_dir / "loopback.key").stat().st_mode & 0o077 == 0
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls_dir / "loopback.crt", tls_dir / "loopback.key")
    port = free_port()
    toml = (DEPLOY / "postfix" / "securemail-smtp.toml").read_text(encoding="utf-8")
    toml = toml.replace("port = 25", f"port = {port}").replace(
        "/etc/postfix/tls/loopback.crt", str(tls_dir / "loopback.crt")
    )
    (tmp_path / "securemail.toml").write_text(toml)
    settings = config.load(tmp_path, env={})
    controller = Controller(
        RecordingHandler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=server_ctx,
        require_starttls=True,
    )
    controller.start()
    try:
        smtp = await relay.connect(settings, relay.tls_context(settings))
        try:
            assert smtp.get_transport_info("sslcontext") is not None
            assert smtp.get_transport_info("peercert")  # verified against [smtp] cafile
        finally:
            await smtp.quit()
        # Negative: another self-signed certificate (not the one in cafile) is refused.
        other = tmp_path / "other"
        subprocess.run(
            ["sh", str(DEPLOY / "postfix" / "make-loopback-cert.sh"), str(other)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wrong = settings.replace(smtp={"cafile": str(other / "loopback.crt")})
        with pytest.raises(ssl.SSLCertVerificationError):
            await relay.connect(wrong, relay.tls_context(wrong))
    finally:
        controller.stop()


# -- the operator's guide ----------------------------------------------------------------------


def test_operations_guide_names_every_deploy_file_and_nothing_that_is_missing():
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    shipped = {str(p.relative_to(ROOT)) for p in DEPLOY.rglob("*") if p.is_file()}
    named = set(re.findall(r"deploy/[\w./-]+\w", guide))
    # ".timer" in the table stands for the timer next to the service of the same name.
    named |= {n.removesuffix(".service") + ".timer" for n in named if n.endswith("check.service")}
    assert not {n for n in named if n not in shipped and not (ROOT / n).is_dir()}
    assert shipped <= named, f"describe in docs/operations.md: {sorted(shipped - named)}"
    for section in ("Backup and restore", "Retention and purge", "Monitoring"):
        assert f"## {section}" in guide
