"""Unattended credentials (issue 12): AK/SK signing, IAM tokens that renew, regions."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs
from yarl import URL

from bench import generate
from tests.clirun import TOKEN, Finished, cli_env, get_json, inventory_file, run_cli
from worker import regions
from worker.config import Config
from worker.credentials import AkSk, CredentialError, IamPassword, Token, renewal, resolve
from worker.emulator import Emulator, EmulatorConfig
from worker.emulator.iam import IamUser
from worker.emulator.stats import Stats

AK, SK = "AKTEST0000000000001", "SKtest-9b1e44c0d7f2-very-secret"
STS = "sts-temporary-4c1d9e-secret"
SDK_PROJECT = "5f0e4a8c1b7d2e9f3a6c0b4d8e2f6a1c"
PASSWORD = "p@ss-6e0b2d-secret"
CONFIG = Config(inputs=("x.csv",), endpoint="https://apig.example.com")


def _env(**values: str) -> dict[str, str]:
    return {"HOME": "/nonexistent", **values}


# -- which credential, from where ----------------------------------------------------------------


def test_a_token_in_the_environment_is_a_static_token() -> None:
    found = resolve(CONFIG, _env(VPC_MEMBERS_TOKEN="tok-1234"))
    assert isinstance(found.credentials, Token) and found.credentials.kind == "token"


def test_access_keys_in_the_environment_sign_and_a_security_token_makes_them_temporary() -> None:
    keys = resolve(CONFIG, _env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK))
    assert isinstance(keys.credentials, AkSk) and keys.credentials.kind == "aksk"
    temporary = resolve(
        CONFIG,
        _env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK, HUAWEICLOUD_SDK_SECURITY_TOKEN=STS),
    )
    assert temporary.credentials.kind == "temporary_aksk"
    assert set(temporary.credentials.secrets) == {SK, STS}


def test_only_access_keys_are_sent_alone_until_taken_as_the_service_locks_only_them() -> None:
    keys = resolve(CONFIG, _env(HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK)).credentials
    token = resolve(CONFIG, _env(VPC_MEMBERS_TOKEN="tok-1234")).credentials
    assert keys.locks_on_failures and not token.locks_on_failures


def test_the_sdk_credentials_file_is_the_fallback_and_fills_the_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory())
    profile = tmp_path / ".huaweicloud" / "credentials"
    profile.parent.mkdir()
    profile.write_text(f"[basic]\nak = {AK}\nsk = {SK}\nproject_id = proj0123\n")
    profile.chmod(0o644)
    found = resolve(CONFIG, {"HOME": str(tmp_path)})
    assert found.credentials.kind == "aksk" and found.project_id == "proj0123"
    assert "credentials_file_readable" in capsys.readouterr().out
    named = resolve(CONFIG, _env(HUAWEICLOUD_SDK_CREDENTIALS_FILE=str(profile)))
    assert named.source.startswith("credentials file")


def test_two_explicit_kinds_at_once_are_refused() -> None:
    with pytest.raises(CredentialError, match="two kinds of credentials"):
        resolve(CONFIG, _env(VPC_MEMBERS_TOKEN="tok-1234", HUAWEICLOUD_SDK_AK=AK))


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "no credentials"),
        ({"HUAWEICLOUD_SDK_AK": AK}, "HUAWEICLOUD_SDK_SK is not"),
        ({"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": "sk with spaces"}, "cannot carry"),
        ({"VPC_MEMBERS_IAM_USER": "ops"}, "VPC_MEMBERS_IAM_DOMAIN"),
        ({"HUAWEICLOUD_SDK_CREDENTIALS_FILE": "/nonexistent/creds"}, "no such file"),
    ],
)
def test_unusable_credentials_say_why_without_the_secret(env: dict[str, str], says: str) -> None:
    with pytest.raises(CredentialError, match=says) as raised:
        resolve(CONFIG, _env(**env))
    assert "spaces" not in str(raised.value).replace("(spaces", "")


def test_an_iam_login_needs_a_scope_and_an_endpoint() -> None:
    env = _env(
        VPC_MEMBERS_IAM_DOMAIN="acme", VPC_MEMBERS_IAM_USER="ops", VPC_MEMBERS_IAM_PASSWORD=PASSWORD
    )
    with pytest.raises(CredentialError, match="--iam-endpoint or --region"):
        resolve(CONFIG, env)
    with pytest.raises(CredentialError, match="scoped to a project"):
        resolve(CONFIG, env, "https://iam.example.com")
    found = resolve(CONFIG.replace(region="cn-north-4"), env, "https://iam.example.com")
    assert isinstance(found.credentials, IamPassword)


def test_a_password_file_of_two_lines_is_refused_without_showing_them(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\nsecond-line-9f3\n")
    env = _env(VPC_MEMBERS_IAM_DOMAIN="acme", VPC_MEMBERS_IAM_USER="ops")
    config = CONFIG.replace(region="cn-north-4", iam_password_file=secret)
    with pytest.raises(CredentialError, match="more than one line") as raised:
        resolve(config, env, "https://iam.example.com")
    assert PASSWORD not in str(raised.value) and "second-line" not in str(raised.value)
    secret.write_text(PASSWORD + "\n")
    assert isinstance(resolve(config, env, "https://iam.example.com").credentials, IamPassword)


# -- regions ------------------------------------------------------------------------------


def test_regions_derive_endpoints_as_the_vendor_publishes_them() -> None:
    assert regions.endpoint("roma", "cn-north-4", {}) == "https://roma.cn-north-4.myhuaweicloud.com"
    assert (
        regions.endpoint("apig", "eu-west-101", {}) == "https://apig.eu-west-101.myhuaweicloud.eu"
    )
    assert (
        regions.iam_endpoint("ap-southeast-1", {}) == "https://iam.ap-southeast-1.myhuaweicloud.com"
    )
    assert regions.iam_endpoint(None, {}) == "https://iam.myhuaweicloud.com"
    override = {"HUAWEICLOUD_SDK_REGION_ROMA_CN_NORTH_4": "https://roma.internal"}
    assert regions.endpoint("roma", "cn-north-4", override) == "https://roma.internal"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HUAWEICLOUD_SDK_REGION_ROMA_CN_NORTH_4", "127.0.0.1:18080"),
        ("HUAWEICLOUD_SDK_REGION_ROMA_CN_NORTH_4", "http://127.0.0.1:18080/base"),
        ("HUAWEICLOUD_SDK_IAM_ENDPOINT", "https://user:pw@iam.internal"),
    ],
)
async def test_an_endpoint_a_region_override_sets_is_held_to_the_rule_of_endpoint(
    tmp_path: Path, name: str, value: str
) -> None:
    """An override without a scheme failed every row (exit 1); one with a path met a
    404 (exit 3). Like --endpoint, it is refused at once, naming the variable."""
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=86)
    env = cli_env(token=None if "IAM" in name else "t", **{name: value})
    if "IAM" in name:
        env.update(VPC_MEMBERS_IAM_DOMAIN="acme", VPC_MEMBERS_IAM_USER="ops")
        env.update(VPC_MEMBERS_IAM_PASSWORD=PASSWORD)
    done = await run_cli(["run", str(source), "--region", "cn-north-4"], tmp_path / "r", env)
    assert done.code == 2 and name in done.stderr, done.stderr
    assert "pw" not in done.stderr.replace(name, "")


# -- over loopback ------------------------------------------------------------------------


def _iam_env(**extra: str) -> dict[str, str]:
    return cli_env(
        token=None,
        VPC_MEMBERS_IAM_DOMAIN="acme",
        VPC_MEMBERS_IAM_USER="ops",
        HOME="/nonexistent",
        **extra,
    )


def _aksk_env(sk: str = SK, **extra: str) -> dict[str, str]:
    return cli_env(
        token=None, HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=sk, HOME="/nonexistent", **extra
    )


async def _signed_run(
    tmp_path: Path, source: Path, host: str = "127.0.0.1", **env: str
) -> tuple[Finished, Emulator]:
    """``run`` of ``source`` with access keys in the environment (and ``env``), against an
    emulator on ``host`` that verifies their signatures and takes no token it could be
    given."""
    config = EmulatorConfig(
        host=host, tokens=("nobody-uses-this",), aksk=((AK, SK),), auto_create=True
    )
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500"],
            tmp_path / "r",
            _aksk_env(**env),
        )
    return done, emulator


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_run_with_only_access_keys_set_lands_everything(tmp_path: Path, host: str) -> None:
    # Over IPv6 the Host header, which the signature covers, is bracketed.
    _inventory, source = inventory_file(tmp_path, 600, 6, seed=81)
    done, _ = await _signed_run(tmp_path, source, host)
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == 600  # type: ignore[index]
    assert '"credentials":"aksk"' in done.stderr.replace(" ", "")


async def test_the_sdk_project_id_in_the_environment_fills_an_inventory_without_one(
    tmp_path: Path,
) -> None:
    inventory = generate.rows(200, 2, seed=89)
    columns = [name for name in generate.COLUMNS if name != "project_id"]
    source = tmp_path / "in.csv"
    source.write_text(
        "\n".join(
            ",".join(columns if row is None else [generate.csv_cell(row.get(c)) for c in columns])
            for row in [None, *inventory.rows]
        )
        + "\n"
    )
    done, emulator = await _signed_run(tmp_path, source, HUAWEICLOUD_SDK_PROJECT_ID=SDK_PROJECT)
    projects = {key[0] for key in emulator.state.channels}
    members = emulator.state.member_count()
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == 200  # type: ignore[index]
    assert projects == {SDK_PROJECT} and members == 200


async def test_a_sync_with_only_access_keys_prunes_with_signed_deletes(tmp_path: Path) -> None:
    channel = (SDK_PROJECT, "inst0001", "chan000001")
    hosts = [f"10.1.0.{n}" for n in range(1, 5)]
    source = tmp_path / "in.csv"
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,port,weight\n"
        + "".join(f"{','.join(channel)},{h},80,{5 if h == hosts[2] else 1}\n" for h in hosts[:3])
    )
    config = EmulatorConfig(tokens=("x",), aksk=((AK, SK),))
    async with Emulator(config) as emulator:
        live = emulator.state.add_channel(channel)
        live.upsert([(h, {"host": h, "weight": 1, "port": 80}) for h in hosts], 1.7e9)
        done = await run_cli(
            ["sync", str(source), "--endpoint", emulator.url, "--rate", "500", "--prune"],
            tmp_path / "r",
            _aksk_env(),
        )
        kept = {str(m["host"]): m["weight"] for m in emulator.state.channels[channel]}
        stats = emulator.stats
    assert done.code == 0, done.stderr
    assert kept == {hosts[0]: 1, hosts[1]: 1, hosts[2]: 5}
    assert done.summary["extras"]["removed"] == 1  # type: ignore[index]
    # The list (with its query), the update and the delete: each signed, each verified.
    assert stats.by_method == {"GET": 1, "POST": 1, "DELETE": 1}
    assert 401 not in stats.by_status


async def test_temporary_access_keys_send_their_signed_security_token(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 100, 2, seed=82)
    done, _ = await _signed_run(tmp_path, source, HUAWEICLOUD_SDK_SECURITY_TOKEN=STS)
    assert done.code == 0, done.stderr
    assert '"credentials":"temporary_aksk"' in done.stderr.replace(" ", "")


async def test_a_wrong_secret_key_stops_at_the_first_request(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 2000, 20, seed=83)
    config = EmulatorConfig(tokens=("x",), aksk=((AK, SK),), auto_create=True)
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500"],
            tmp_path / "r",
            _aksk_env(sk="SK-wrong-0000000000000000"),
        )
    assert done.code == 3, done.stderr
    assert "APIG.0301" in done.stderr
    # One refusal, not one per request in flight: the service locks a pair after 5.
    assert done.summary["requests"]["sent"] == 1  # type: ignore[index]
    assert done.summary["rows"]["aborted"] == 2000  # type: ignore[index]


def _iam_run(source: Path, url: str, password_file: Path) -> list[str]:
    """``run`` with an IAM login: posts of 10 rows, one at a time, 10 a second."""
    return [
        "run",
        str(source),
        "--endpoint",
        url,
        "--iam-endpoint",
        url,
        "--region",
        "cn-north-4",
        "--rate",
        "10",
        "--concurrency",
        "1",
        "--batch-size",
        "10",
        "--iam-password-file",
        str(password_file),
    ]


async def test_iam_tokens_are_renewed_over_several_lifetimes(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 600, 4, seed=84)
    config = EmulatorConfig(
        tokens=("x",),
        iam_users=(IamUser("acme", "ops", PASSWORD),),
        token_ttl=2.5,
        auto_create=True,
    )
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    async with Emulator(config) as emulator:
        done = await run_cli(
            # 60 requests at 10 a second: six seconds, three tokens. A token is renewed
            # with a fifth of its life left (0.5 s); one request in flight at a time keeps
            # the wait between signing and sending (0.1 s) inside that margin, as a real
            # token's hours of margin keep it at any concurrency.
            _iam_run(source, emulator.url, password_file),
            tmp_path / "r",
            _iam_env(),
        )
        stats = await get_json(emulator.url + "/_emulator/stats")
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == 600  # type: ignore[index]
    assert int(stats["tokens_issued"]) >= 3  # type: ignore[call-overload]
    assert "401" not in done.summary["requests"]["by_status"]  # type: ignore[operator]


@pytest.mark.parametrize("ahead", [timedelta(days=2), -timedelta(hours=20)])
async def test_a_clock_far_off_iams_neither_logs_in_per_request_nor_keeps_a_token_too_long(
    ahead: timedelta,
) -> None:
    """Tokens live 24 hours on IAM's clock. Ours two days ahead, a token looked expired on
    arrival and every request logged in anew; 20 hours behind, it would be kept 4 hours
    past its end. Its lifetime is read on IAM's clock, and the skew is said at each login."""
    config = EmulatorConfig(tokens=("x",), iam_users=(IamUser("acme", "ops", PASSWORD),))
    now = [datetime.now(UTC) + ahead]
    async with Emulator(config) as emulator, aiohttp.ClientSession() as session:
        iam = IamPassword(
            emulator.url, "acme", "ops", PASSWORD, project_name="cn-north-4", clock=lambda: now[0]
        )
        iam.open(session)
        with capture_logs() as events:
            for _ in range(20):
                await iam.authorise("POST", URL(emulator.url), {}, b"")
            assert emulator.stats.tokens_issued == 1
            # Four fifths of the token's 24 hours on, it is renewed: once.
            now[0] += timedelta(hours=19, minutes=13)
            for _ in range(5):
                await iam.authorise("POST", URL(emulator.url), {}, b"")
            assert emulator.stats.tokens_issued == 2
    skews = [event for event in events if event["event"] == "clock_skew"]
    assert len(skews) == 2 and PASSWORD not in repr(events)


_INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(
    fetched=_INSTANTS,
    issued=_INSTANTS,
    life=st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=2)),
)
def test_a_token_is_renewed_at_four_fifths_of_its_life_on_iams_clock(
    fetched: datetime, issued: datetime, life: timedelta
) -> None:
    due = renewal(fetched, issued + life, issued)
    # IAM's own figures, however short (a test's tokens live seconds); nonsense, a minute.
    assert due - fetched == (life * 0.8 if life > timedelta(0) else timedelta(minutes=1))
    # Without issued_at, the life is what is left of it on our clock; one already over
    # (or a clock far ahead) still waits a minute.
    assert renewal(fetched, issued + life, None) - fetched == max(
        (issued + life - fetched) * 0.8, timedelta(minutes=1)
    )


async def _revoke_after(emulator: Emulator, posts: int, *, lasting: bool) -> None:
    """Revoke the IAM tokens issued so far once ``posts`` posts have reached the emulator."""
    while emulator.stats.by_method["POST"] < posts:
        await asyncio.sleep(0.01)
    emulator.api.iam.revoke(lasting=lasting)


async def _run_revoked(tmp_path: Path, *, lasting: bool) -> tuple[Finished, Stats]:
    """40 posts at 10 a second with an IAM login; its tokens are revoked after the 20th."""
    _inventory, source = inventory_file(tmp_path, 400, 4, seed=88)
    config = EmulatorConfig(
        tokens=("x",), iam_users=(IamUser("acme", "ops", PASSWORD),), auto_create=True
    )
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    async with Emulator(config) as emulator:
        # Twenty posts at 10 a second: the token has served two seconds when it is
        # refused, so it was revoked early, not refused as soon as IAM issued it.
        revoking = asyncio.create_task(_revoke_after(emulator, 20, lasting=lasting))
        try:
            done = await run_cli(
                _iam_run(source, emulator.url, password_file), tmp_path / "r", _iam_env()
            )
        finally:
            revoking.cancel()
        assert revoking.done() and not revoking.cancelled(), "the run ended before the revocation"
    return done, emulator.stats


async def test_an_iam_token_revoked_mid_run_is_renewed_and_the_rows_land(tmp_path: Path) -> None:
    done, stats = await _run_revoked(tmp_path, lasting=False)
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == 400  # type: ignore[index]
    # One refusal, one login, and the refused request sent again with the new token.
    assert (stats.tokens_issued, stats.by_status[401]) == (2, 1)
    # The summary counts both sendings, as the service saw them.
    requests = done.summary["requests"]
    assert requests["by_status"]["401"] == 1  # type: ignore[index]
    assert requests["sent"] == stats.by_method["POST"]  # type: ignore[index]


async def test_a_second_401_right_after_the_renewal_stops_the_run(tmp_path: Path) -> None:
    done, stats = await _run_revoked(tmp_path, lasting=True)
    assert done.code == 3, done.stderr
    summary = done.summary
    assert summary["stop_reason"] == "auth_refused"
    rows = summary["rows"]
    # What landed before the revocation stays landed; nothing is sent after the stop.
    assert 190 <= rows["succeeded"] < 400  # type: ignore[index]
    assert rows["aborted"] == 400 - rows["succeeded"]  # type: ignore[index]
    assert (stats.tokens_issued, stats.by_status[401]) == (2, 2)


async def test_a_wrong_iam_password_stops_the_run_before_any_write(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 100, 2, seed=85)
    config = EmulatorConfig(
        tokens=("x",), iam_users=(IamUser("acme", "ops", PASSWORD),), auto_create=True
    )
    async with Emulator(config) as emulator:
        done = await run_cli(
            [
                "run",
                str(source),
                "--endpoint",
                emulator.url,
                "--iam-endpoint",
                emulator.url,
                "--region",
                "cn-north-4",
            ],
            tmp_path / "r",
            _iam_env(VPC_MEMBERS_IAM_PASSWORD="not-" + PASSWORD),
        )
        stats = await get_json(emulator.url + "/_emulator/stats")
    assert done.code == 3, done.stderr
    assert "refused the login" in done.stderr
    assert stats["requests_by_method"].get("POST", 0) == 0 or stats["members_created"] == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["aksk", "temporary", "iam"])
async def test_no_new_secret_reaches_any_output(tmp_path: Path, kind: str) -> None:
    _inventory, source = inventory_file(tmp_path, 150, 3, invalid_rate=0.05, seed=86)
    log = tmp_path / "run.log"
    config = EmulatorConfig(
        tokens=("x",),
        aksk=((AK, SK),),
        iam_users=(IamUser("acme", "ops", PASSWORD),),
        auto_create=True,
        fail_rate=0.2,
        seed=4,
    )
    async with Emulator(config) as emulator:
        argv = [
            "run",
            str(source),
            "--endpoint",
            emulator.url,
            "--rate",
            "500",
            "--log-level",
            "debug",
            "--log-file",
            str(log),
        ]
        if kind == "iam":
            argv += ["--iam-endpoint", emulator.url, "--region", "r1"]
            env = _iam_env(VPC_MEMBERS_IAM_PASSWORD=PASSWORD)
        else:
            env = _aksk_env(
                **({"HUAWEICLOUD_SDK_SECURITY_TOKEN": STS} if kind == "temporary" else {})
            )
        done = await run_cli(argv, tmp_path / "r", env)
        issued = list(emulator.api.iam._expiry) if kind == "iam" else []  # type: ignore[attr-defined]
    assert done.code == 4, done.stderr
    texts = [done.stdout, done.stderr, log.read_text()]
    texts += [p.read_text() for p in (tmp_path / "r").rglob("*") if p.is_file()]
    for secret in (SK, STS, PASSWORD, *issued):
        for text in texts:
            assert secret not in text
    assert os.environ.get("HUAWEICLOUD_SDK_SK") != SK  # the test did not leak into pytest


@pytest.mark.parametrize("per_channel", [1, 4])
async def test_the_default_per_channel_concurrency_never_meets_a_write_conflict(
    tmp_path: Path, per_channel: int
) -> None:
    # The service fails overlapping writes to one channel (500 APIG.9999); one write at
    # a time per channel, the default, never overlaps, where four at a time do.
    _inventory, source = inventory_file(tmp_path, 2000, 2, seed=87)
    config = EmulatorConfig(
        tokens=(TOKEN,), auto_create=True, concurrent_write_conflicts=True, latency_ms=30
    )
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500", "--batch-size",
             "20", "--concurrency", "8", "--per-channel-concurrency", str(per_channel),
             "--max-attempts", "20"],
            tmp_path / "r",
        )  # fmt: skip
    conflicts = done.summary["requests"]["by_status"].get("500", 0)  # type: ignore[union-attr]
    assert done.summary["rows"]["succeeded"] == 2000, done.stderr  # type: ignore[index]
    assert (conflicts == 0) == (per_channel == 1)
