"""TLS over loopback: the emulator serving HTTPS, the worker verifying it (or told not to)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.clirun import TOKEN, Finished, inventory_file, run_cli
from worker.emulator import Emulator, EmulatorConfig

FAST = ("--rate", "2000", "--concurrency", "8", "--batch-size", "10")


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def _tls_config(authority: trustme.CA, directory: Path, host: str = "127.0.0.1") -> EmulatorConfig:
    """The emulator's TLS, with a certificate ``authority`` issued for ``host``."""
    cert = authority.issue_cert(host)
    chain, key = directory / "server.pem", directory / "server.key"
    cert.private_key_pem.write_to_path(str(key))
    with chain.open("wb") as handle:
        for blob in cert.cert_chain_pems:
            handle.write(blob.bytes())
    return EmulatorConfig(tokens=(TOKEN,), auto_create=True, tls_cert=chain, tls_key=key)


async def _run(tmp_path: Path, authority: trustme.CA, *flags: str) -> tuple[Finished, int]:
    _inventory, source = inventory_file(tmp_path, 200, 4, seed=2)
    async with Emulator(_tls_config(authority, tmp_path)) as emulator:
        assert emulator.url.startswith("https://")
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, *FAST, *flags], tmp_path / "reports"
        )
        members = emulator.state.member_count()
    return done, members


async def test_a_run_over_tls_trusts_the_ca_it_is_given(
    tmp_path: Path, authority: trustme.CA
) -> None:
    ca = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    done, members = await _run(tmp_path, authority, "--ca-bundle", str(ca))
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == members == 200  # type: ignore[index]


async def test_an_untrusted_certificate_stops_the_run_before_anything_is_sent(
    tmp_path: Path, authority: trustme.CA
) -> None:
    done, members = await _run(tmp_path, authority)
    assert done.code == 3, done.stderr
    assert "TLS certificate was refused" in done.stderr and "--ca-bundle" in done.stderr
    assert '"event":"certificate_refused"' in done.stderr.replace(" ", "")
    assert done.summary["stop_reason"] == "certificate_refused"
    assert done.summary["rows"]["aborted"] == 200  # type: ignore[index]
    assert members == 0
    # Refused at once, not retried: one attempt per request that was under way.
    assert done.summary["requests"]["retried"] == 0  # type: ignore[index]


async def test_insecure_skips_verification_and_says_so(
    tmp_path: Path, authority: trustme.CA
) -> None:
    done, members = await _run(tmp_path, authority, "--insecure")
    assert done.code == 0, done.stderr
    assert members == 200
    assert "tls_verification_disabled" in done.stderr


@pytest.mark.parametrize("problem", ["missing", "mismatched"])
def test_the_emulator_refuses_a_certificate_it_cannot_use(
    tmp_path: Path, authority: trustme.CA, problem: str
) -> None:
    config = _tls_config(authority, tmp_path)
    assert config.tls_cert is not None
    if problem == "missing":
        flags = ["--tls-cert", str(tmp_path / "nowhere.pem")]
    else:
        other = tmp_path / "other.key"
        authority.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
        flags = ["--tls-cert", str(config.tls_cert), "--tls-key", str(other)]
    result = subprocess.run(
        [sys.executable, "-m", "worker", "emulator", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    expected = "nowhere.pem: No such file" if problem == "missing" else "not a matching PEM"
    assert expected in result.stderr


async def test_a_certificate_for_another_host_names_the_endpoint_not_the_ca(
    tmp_path: Path, authority: trustme.CA
) -> None:
    config = _tls_config(authority, tmp_path, "api.example.test")
    ca = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    _inventory, source = inventory_file(tmp_path, 50, 1, seed=3)
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--ca-bundle", str(ca)],
            tmp_path / "reports",
        )
    assert done.code == 3, done.stderr
    assert "names a host the certificate was issued for" in done.stderr
    assert "pass --ca-bundle" not in done.stderr
