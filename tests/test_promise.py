"""The promise under every fault (issue 9): one true report row per input row, over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
import trustme
from aiohttp import web

from bench import generate
from tests.clirun import (
    TOKEN,
    Finished,
    cli_env,
    get_json,
    inventory_file,
    run_cli,
    serve,
    start_cli,
    wait_for_landed_rows,
)
from worker import manifest
from worker.emulator import Emulator, EmulatorConfig
from worker.inventory import detect


def _rows(done: Finished, *names: str) -> list[dict[str, str]]:
    return [row for name in names for row in done.report(name)]


def _one_row_per_line(done: Finished, count: int) -> None:
    where = Counter((r["source"], r["line"]) for r in _rows(done, "succeeded.csv", "errors.csv"))
    assert len(where) == count and set(where.values()) == {1}


async def _interrupted_run(tmp_path: Path, emulator: Emulator, source: Path) -> Path:
    """A run of ``source`` killed (-9) once it landed some rows; its run directory."""
    process = await start_cli(
        ["run", str(source), "--endpoint", emulator.url, "--rate", "40", "--batch-size", "10"],
        tmp_path / "reports",
    )
    run_dir = await wait_for_landed_rows(tmp_path / "reports", at_least=100)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    return run_dir


# -- resume that cannot lie ------------------------------------------------------------------


def test_an_input_is_fingerprinted_by_the_sha256_of_all_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * 5
    source = tmp_path / "inventory.csv"
    source.write_bytes(data)
    monkeypatch.setattr(manifest, "_HASH_CHUNK", 7)  # many chunks, the last one short
    printed = manifest.fingerprint(detect(str(source)))
    assert printed.sha256 == hashlib.sha256(data).hexdigest() and printed.size == len(data)


async def test_a_plan_writes_run_json_with_its_inputs_hashed_while_it_read_them(
    tmp_path: Path,
) -> None:
    _inventory, source = inventory_file(tmp_path, 300, 6, seed=57)
    done = await run_cli(["plan", str(source)], tmp_path / "reports")
    assert done.code == 0, done.stderr
    recorded = manifest.load(done.run_dir)
    assert [(i.path, i.sha256) for i in recorded.inputs] == [
        (str(source.resolve()), hashlib.sha256(source.read_bytes()).hexdigest())
    ]
    assert recorded.command == "plan" and recorded.run_id == done.run_dir.name


async def test_resume_refuses_an_inventory_regenerated_in_another_order(tmp_path: Path) -> None:
    inventory, source = inventory_file(tmp_path, 1000, 10, seed=41)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        run_dir = await _interrupted_run(tmp_path, emulator, source)
        # The nightly export ran again: the same servers, in another order, same path.
        generate.write_csv(source, list(reversed(inventory.rows)))
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--resume", str(run_dir)],
            tmp_path / "reports",
        )
    assert done.code == 2, done.stderr
    assert "changed since the run began" in done.stderr
    assert "Traceback" not in done.stderr


async def test_resume_takes_the_same_file_under_another_spelling(tmp_path: Path) -> None:
    inventory, source = inventory_file(tmp_path, 1000, 10, dup_rate=0.02, seed=42)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        run_dir = await _interrupted_run(tmp_path, emulator, source)
        other = Path(os.path.relpath(source)) if source.is_absolute() else source.resolve()
        spelled = f"{other.parent}/./{other.name}"
        done = await run_cli(
            ["run", spelled, "--endpoint", emulator.url, "--rate", "500", "--resume", str(run_dir)],
            tmp_path / "reports",
        )
    assert done.code == 0, done.stderr
    _one_row_per_line(done, len(inventory.rows))
    # The reports keep the name the first run gave the input.
    assert {r["source"] for r in _rows(done, "succeeded.csv", "errors.csv")} == {str(source)}


async def test_resume_refuses_options_that_change_decisions_and_names_what_differs(
    tmp_path: Path,
) -> None:
    _inventory, source = inventory_file(tmp_path, 300, 6, seed=55)
    reports = tmp_path / "reports"
    async with (
        Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator,
        Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as other,
    ):
        base = ["--endpoint", emulator.url, "--rate", "500", "--shard", "0/2"]
        first = await run_cli(["run", str(source), *base], reports)
        assert first.code == 0, first.stderr
        synced = await run_cli(["sync", str(source), *base], tmp_path / "synced")
        assert synced.code == 0, synced.stderr
        kept = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
        sent_before = (await get_json(emulator.url + "/_emulator/stats"))["requests"]
        at, on = ["--endpoint", emulator.url, "--rate", "500"], ["--shard", "0/2"]
        cases = [
            (["run", *at, "--shard", "1/2"], first, "shard was '0/2', now '1/2'"),
            (["run", *at], first, "shard was '0/2', now None"),
            (["run", "--endpoint", other.url, *on], first, f"endpoint was {emulator.url!r}"),
            (["run", *at, *on, "--project-id", "p9"], first, "project_id was None, now 'p9'"),
            (["run", *at, *on, "--instance-id", "i9"], first, "instance_id was None, now 'i9'"),
            (["run", *at, *on, "--channel-id", "c9"], first, "channel_id was None, now 'c9'"),
            (["run", *at, *on, "--api", "apig"], first, "api was 'roma', now 'apig'"),
            (["sync", *at, *on], first, "the run was a 'run', this is a 'sync'"),
            (["sync", *at, *on, "--prune"], synced, "prune was False, now True"),
        ]
        for command, ran, says in cases:
            done = await run_cli(
                [command[0], str(source), *command[1:], "--resume", str(ran.run_dir)],
                ran.reports_dir,
            )
            assert done.code == 2, (command, done.stderr)
            assert "this is not the same run" in done.stderr and says in done.stderr, command
        untouched = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
        # Batching and pace change no row's fate: a resume may take others.
        paced = await run_cli(
            ["run", str(source), *at[:2], *on, "--rate", "50", "--batch-size", "7",
             "--resume", str(first.run_dir)],
            reports,
        )  # fmt: skip
        sent_after = (await get_json(emulator.url + "/_emulator/stats"))["requests"]
        other_sent = (await get_json(other.url + "/_emulator/stats"))["requests"]
    assert paced.code == 0, paced.stderr
    assert paced.summary["requests"]["sent"] == 0  # type: ignore[index]
    # The refused resumes sent nothing, to either endpoint, and left the run as it was.
    assert sent_after == sent_before and other_sent == 0
    assert untouched == kept


@pytest.mark.parametrize(
    "damage",
    [b"in.csv,not-a-number,p\n", b'"an unclosed quote,\n', b"too,few\n"],
    ids=["bad-line-number", "broken-quoting", "short-row"],
)
async def test_a_corrupt_report_is_an_error_naming_file_and_line(
    tmp_path: Path, damage: bytes
) -> None:
    _inventory, source = inventory_file(tmp_path, 300, 3, seed=43)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        run_dir = await _interrupted_run(tmp_path, emulator, source)
        succeeded = run_dir / "succeeded.csv"
        lines = succeeded.read_bytes().splitlines(keepends=True)
        succeeded.write_bytes(b"".join([*lines[:5], damage, *lines[5:]]))
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--resume", str(run_dir)],
            tmp_path / "reports",
        )
    assert done.code == 2, done.stderr
    assert f"{succeeded}:6" in done.stderr  # the line after the header and four rows
    assert "Traceback" not in done.stderr


# -- reports that cannot be written ---------------------------------------------------------


async def test_a_full_disk_stops_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    inventory, source = inventory_file(tmp_path, 3000, 10, invalid_rate=0.01, seed=44)
    reports = tmp_path / "reports"
    reports.mkdir()
    args = ["run", str(source), "--rate", "1000", "--batch-size", "50"]
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        # The disk fills up after 40 KB of reports.
        full = await run_cli([*args, "--endpoint", emulator.url], reports, file_limit=40_000)
        sent_then = (await get_json(emulator.url + "/_emulator/stats"))["requests"]
        assert full.code == 74, full.stderr
        assert "succeeded.csv" in full.stderr and "File too large" in full.stderr
        # One line says what failed and what to do; the endpoint is not blamed.
        said = [line for line in full.stderr.splitlines() if line.startswith("vpc-members:")]
        assert len(said) == 1 and "cannot write the reports" in said[0], said
        summary = full.summary
        assert summary["stop_reason"] == "reports_unwritable"
        assert summary["rows"]["total"] == 3000  # type: ignore[index]
        # Nothing more was sent once the report failed: only requests already in flight.
        assert int(sent_then) < 3000 // 50  # type: ignore[call-overload]
        succeeded = (full.run_dir / "succeeded.csv").read_bytes()
        assert len(succeeded) <= 40_000

        done = await run_cli(
            [*args, "--endpoint", emulator.url, "--resume", str(full.run_dir)], reports
        )
        state = await get_json(emulator.url + "/_emulator/state")
    assert done.code == 4, done.stderr  # only the 1% invalid rows
    _one_row_per_line(done, 3000)
    landed = [m for c in state["channels"] for m in c["members"]]  # type: ignore[attr-defined]
    assert len(landed) == Counter(inventory.expected)["valid"]


async def test_a_summary_that_cannot_be_written_is_said_and_exits_74(tmp_path: Path) -> None:
    # One row keeps every report under 1,000 bytes (run.json ~0.6 KB, succeeded.csv ~0.5 KB)
    # while the summary, with its counts and paths, needs ~1.5 KB: only the summary meets
    # the file-size limit.
    _inventory, source = inventory_file(tmp_path, 1, 1, seed=56)
    reports = tmp_path / "reports"
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        # Not measured: coverage's own data file would meet the limit too, and its
        # traceback at exit would be taken for the worker's.
        unmeasured = {k: v for k, v in cli_env().items() if not k.startswith("COVERAGE_")}
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url], reports, unmeasured, file_limit=1_000
        )
        landed = emulator.state.member_count()
    assert done.code == 74, done.stderr
    run_dir = done.run_dir
    # The reports were whole: only the summary failed.
    assert landed == 1 and len(done.report("succeeded.csv")) == 1
    assert not (run_dir / "summary.json").exists()
    assert not list(run_dir.glob(".summary.json.*"))  # no temporary file left behind
    assert f"{run_dir / 'summary.json'}: File too large" in done.stderr
    assert "cannot write the reports" in done.stderr
    assert '"event":"summary_unwritable"' in done.stderr.replace(" ", "")
    assert "Traceback" not in done.stderr


# -- answers and networks as they are --------------------------------------------------------


@pytest.fixture
async def odd_endpoint() -> AsyncIterator[tuple[str, list[str]]]:
    """An endpoint that answers like a proxy or a login page: a redirect, then HTML."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.method)
        if len(seen) == 1:
            raise web.HTTPFound("https://login.example/sso")
        return web.Response(text="<html>Sign in</html>", content_type="text/html")

    runner, url = await serve(answer)
    try:
        yield url, seen
    finally:
        await runner.cleanup()


async def test_answers_this_api_never_gives_stop_the_run_and_blame_no_row(
    tmp_path: Path, odd_endpoint: tuple[str, list[str]]
) -> None:
    url, seen = odd_endpoint
    _inventory, source = inventory_file(tmp_path, 500, 5, seed=45)
    done = await run_cli(["run", str(source), "--endpoint", url, "--rate", "100"], tmp_path / "r")
    assert done.code == 3, done.stderr
    assert "HTTP 302" in done.stderr or "HTTP 200" in done.stderr
    assert f"error: {url}: HTTP" in done.stderr  # the message names the endpoint
    rows = done.summary["rows"]
    assert rows["aborted"] == 500 and rows["rejected"] == 0  # type: ignore[index]
    assert done.summary["stop_reason"] == "unexpected_answer"
    assert len(seen) <= 8  # the requests in flight when the first answer came back


def _free_port() -> int:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port: int = placeholder.getsockname()[1]
        return port


async def test_a_refused_port_is_given_up_at_once(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 5000, 50, seed=46)
    url = f"http://127.0.0.1:{_free_port()}"
    done = await run_cli(["run", str(source), "--endpoint", url, "--rate", "100"], tmp_path / "r")
    assert done.code == 3, done.stderr
    assert done.summary["stop_reason"] == "unreachable"
    assert done.summary["rows"]["aborted"] == 5000  # type: ignore[index]
    assert done.summary["requests"]["sent"] <= 3 + 8  # type: ignore[index]


async def test_https_against_a_plain_http_port_is_unreachable_not_retried(
    tmp_path: Path,
) -> None:
    _inventory, source = inventory_file(tmp_path, 1000, 10, seed=47)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        https = emulator.url.replace("http://", "https://")
        done = await run_cli(["run", str(source), "--endpoint", https], tmp_path / "r")
    assert done.code == 3, done.stderr
    assert done.summary["stop_reason"] == "unreachable"
    assert done.summary["requests"]["sent"] <= 3 + 8  # type: ignore[index]


async def test_an_endpoint_that_accepts_and_never_answers_is_given_up(tmp_path: Path) -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    _inventory, source = inventory_file(tmp_path, 2000, 20, seed=48)
    async with silent:
        done = await run_cli(
            ["run", str(source), "--endpoint", f"http://127.0.0.1:{port}", "--timeout", "0.3"],
            tmp_path / "r",
        )
    assert done.code == 3, done.stderr
    assert done.summary["stop_reason"] == "unreachable"
    assert done.summary["requests"]["by_status"] == {"timeout": done.summary["requests"]["sent"]}  # type: ignore[index]


def _listener_that_never_completes_a_handshake() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback port whose accept queue is full, so Linux drops every further SYN: a
    connect there neither succeeds nor is refused, like a host behind a silent firewall."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # room for one connection that is never accepted
    port = listener.getsockname()[1]
    held = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.5)
        try:
            filler.connect(("127.0.0.1", port))
        except TimeoutError:
            filler.close()
            return listener, held
        except OSError:
            filler.close()
            break
        held.append(filler)
    listener.close()
    for filler in held:
        filler.close()
    pytest.skip("this kernel does not leave a SYN unanswered past a full accept queue")


async def test_the_connect_timeout_fires_on_its_own_while_the_read_timeout_is_long(
    tmp_path: Path,
) -> None:
    listener, held = _listener_that_never_completes_a_handshake()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    _inventory, source = inventory_file(tmp_path, 500, 5, seed=58)
    process = await start_cli(
        ["run", str(source), "--endpoint", url, "--connect-timeout", "0.2", "--timeout", "3600"],
        tmp_path / "r",
    )
    try:
        async with asyncio.timeout(60):  # a hang guard: an unbounded connect lasts ~2 min
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for sock in (listener, *held):
            sock.close()
    done = Finished(process.returncode or 0, stdout.decode(), stderr.decode(), tmp_path / "r")
    assert done.code == 3, done.stderr
    assert done.summary["stop_reason"] == "unreachable"
    assert "no connection within the connect timeout" in str(done.summary["stop_detail"])
    requests = done.summary["requests"]
    assert requests["by_status"] == {"connection_error": requests["sent"]}  # type: ignore[index]


async def test_a_slow_answer_is_not_cut_short_by_the_connect_timeout(tmp_path: Path) -> None:
    # Every answer takes 0.3 s, three times the connect timeout: only the read timeout
    # may bound the wait for it.
    _inventory, source = inventory_file(tmp_path, 200, 4, seed=59)
    config = EmulatorConfig(tokens=(TOKEN,), auto_create=True, latency_ms=300)
    async with Emulator(config) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500",
             "--connect-timeout", "0.1", "--max-attempts", "1"],
            tmp_path / "r",
        )  # fmt: skip
    assert done.code == 0, done.stderr
    assert done.summary["requests"]["by_status"] == {"201": 4}  # type: ignore[index]


async def test_a_wait_for_the_rate_limiter_longer_than_the_timeout_times_nothing_out(
    tmp_path: Path,
) -> None:
    # Four requests are ready together and the pacer lets one go a second: the last waits
    # about 3 s for its slot, six times the read timeout. One attempt each, so a single
    # timeout would leave rows failed.
    _inventory, source = inventory_file(tmp_path, 40, 4, seed=60)
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "1", "--timeout", "0.5",
             "--batch-size", "10", "--max-attempts", "1"],
            tmp_path / "r",
        )  # fmt: skip
        landed = emulator.state.member_count()
    assert done.code == 0, done.stderr
    assert landed == done.summary["rows"]["succeeded"] == 40  # type: ignore[index]
    assert done.summary["requests"]["by_status"] == {"201": 4}  # type: ignore[index]


@pytest.mark.parametrize(
    "endpoint",
    ["127.0.0.1:8080", "ftp://127.0.0.1", "https://", "https://user:pw@example.com"],
)
async def test_an_endpoint_that_cannot_be_one_is_a_usage_error(
    tmp_path: Path, endpoint: str
) -> None:
    _inventory, source = inventory_file(tmp_path, 10, 1, seed=49)
    done = await run_cli(["run", str(source), "--endpoint", endpoint], tmp_path / "r")
    assert done.code == 2, done.stderr
    assert "--endpoint" in done.stderr
    assert "pw" not in done.stderr.replace("https://user:pw", "")


class _Proxy:
    """A forward proxy on loopback (absolute-form requests and CONNECT), counting uses."""

    def __init__(self) -> None:
        self.connections = 0
        self.methods: set[bytes] = set()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> _Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _version = head.split(b"\r\n", 1)[0].split(b" ")
        self.methods.add(method)
        if method == b"CONNECT":
            host, port = target.rsplit(b":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            authority = target.split(b"/")[2]
            host, port = authority.rsplit(b":", 1)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            upstream_writer.write(head)
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.close()


@pytest.mark.parametrize("how", ["environment", "flag", "no-proxy"])
async def test_proxies_are_honoured(tmp_path: Path, how: str) -> None:
    _inventory, source = inventory_file(tmp_path, 300, 3, seed=50)
    async with (
        Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator,
        _Proxy() as proxy,
    ):
        env = cli_env()
        argv = ["run", str(source), "--endpoint", emulator.url, "--rate", "500"]
        if how == "flag":
            argv += ["--proxy", proxy.url]
        else:
            env["HTTP_PROXY"] = proxy.url
            if how == "no-proxy":
                env["NO_PROXY"] = "127.0.0.1"
        done = await run_cli(argv, tmp_path / "r", env)
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == 300  # type: ignore[index]
    assert (proxy.connections > 0) == (how != "no-proxy")


@pytest.mark.parametrize("how", ["environment", "no-proxy"])
async def test_https_proxy_tunnels_an_https_endpoint_and_no_proxy_bypasses_it(
    tmp_path: Path, how: str
) -> None:
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1")
    chain, key, ca = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    authority.cert_pem.write_to_path(str(ca))
    tls = EmulatorConfig(tokens=(TOKEN,), auto_create=True, tls_cert=chain, tls_key=key)
    _inventory, source = inventory_file(tmp_path, 300, 3, seed=57)
    async with Emulator(tls) as emulator, _Proxy() as proxy:
        assert emulator.url.startswith("https://")
        # Only HTTPS_PROXY: an https:// endpoint must not take HTTP_PROXY's (absent) word.
        env = {k: v for k, v in cli_env().items() if "proxy" not in k.lower()}
        env["HTTPS_PROXY"] = proxy.url
        if how == "no-proxy":
            env["NO_PROXY"] = "127.0.0.1"
        done = await run_cli(
            ["run", str(source), "--endpoint", emulator.url, "--rate", "500",
             "--ca-bundle", str(ca)],
            tmp_path / "r",
            env,
        )  # fmt: skip
        members = emulator.state.member_count()
    assert done.code == 0, done.stderr
    assert done.summary["rows"]["succeeded"] == members == 300  # type: ignore[index]
    if how == "environment":
        # A tunnel, never the request in clear to the proxy: TLS goes end to end.
        assert proxy.connections > 0 and proxy.methods == {b"CONNECT"}
    else:
        assert proxy.connections == 0


# -- exits a scheduler can act on ------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "project_id,instance_id,vpc_channel_id,host\n", "\n\n"])
async def test_an_empty_input_is_its_own_outcome(tmp_path: Path, content: str) -> None:
    source = tmp_path / "empty.csv"
    source.write_text(content)
    done = await run_cli(["run", str(source), "--emulator"], tmp_path / "r")
    assert done.code == 5, done.stderr
    assert done.summary["rows"]["total"] == 0  # type: ignore[index]


async def test_ctrl_c_with_nothing_in_flight_exits_at_once(tmp_path: Path) -> None:
    # At 0.1 requests a second the next slot is ten seconds away: SIGINT must not wait for it.
    _inventory, source = inventory_file(tmp_path, 500, 5, seed=51)
    process = await start_cli(
        ["run", str(source), "--emulator", "--rate", "0.1", "--batch-size", "100"],
        tmp_path / "r",
    )
    await wait_for_landed_rows(tmp_path / "r", at_least=50)
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(8):  # a hang guard: the next slot is 10 s away
        stdout, stderr = await process.communicate()
    done = Finished(process.returncode or 0, stdout.decode(), stderr.decode(), tmp_path / "r")
    assert done.code == 130, done.stderr
    assert done.summary["rows"]["aborted"] == 400  # type: ignore[index]


def test_a_signal_after_the_run_ended_leaves_its_exit_code_as_the_summary_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT while the summary table printed raised KeyboardInterrupt there (a
    traceback, and death by signal), though summary.json already said the run's code."""
    import signal as signals

    from worker import commands, display
    from worker.config import Config

    printed = display.print_summary
    raised: list[BaseException] = []

    def interrupted_while_printing(summary: object) -> None:
        try:
            os.kill(os.getpid(), signals.SIGINT)
            printed(summary)  # type: ignore[arg-type]
        except KeyboardInterrupt as exc:  # caught here: it would end the test session
            raised.append(exc)

    monkeypatch.setattr(display, "print_summary", interrupted_while_printing)
    monkeypatch.setenv("VPC_MEMBERS_TOKEN", "t")
    _inventory, source = inventory_file(tmp_path, 20, 1, seed=53)
    config = Config(
        inputs=(str(source),),
        emulator=True,
        reports_dir=tmp_path / "r",
        log_file=tmp_path / "run.log",
        progress="off",  # type: ignore[arg-type]
    )

    before = signals.getsignal(signals.SIGINT)
    assert commands.execute("run", config) == 0
    assert not raised
    assert signals.getsignal(signals.SIGINT) is before  # given back to the caller
    summary = orjson.loads(next((tmp_path / "r").glob("2*/summary.json")).read_bytes())
    assert summary["exit_code"] == 0


def test_a_crash_exits_70_with_its_traceback_in_the_log_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker import commands
    from worker.config import Config
    from worker.planning import Upserts

    secret = "tok-crash-7d1e-never-shown"
    bulky = "10.9.9.9-" * 10_000  # a local the traceback must not dump

    def broken(self: Upserts, entry: object) -> object:
        held = bulky  # noqa: F841 - a local variable in the crashing frame
        raise RuntimeError("a bug in the planner")

    monkeypatch.setattr(Upserts, "_entry", broken)
    monkeypatch.setenv("VPC_MEMBERS_TOKEN", secret)
    _inventory, source = inventory_file(tmp_path, 50, 1, seed=52)
    log = tmp_path / "run.log"
    config = Config(
        inputs=(str(source),),
        emulator=True,
        reports_dir=tmp_path / "r",
        log_file=log,
        log_format="json",  # type: ignore[arg-type]
        progress="off",  # type: ignore[arg-type]
    )
    code = commands.execute("run", config)
    out, err = capsys.readouterr()
    assert code == 70
    assert "internal error" in err and "Traceback" not in err
    text = log.read_text()
    assert "run_crashed" in text and "a bug in the planner" in text
    assert "10.9.9.9-10.9.9.9" not in text  # no local variables in the traceback
    assert len(text) < 20_000
    for output in (out, err, text):
        assert secret not in output


_CRASHING_IN_PROCESS = """
import sys
from pathlib import Path

from worker import commands
from worker.config import Config
from worker.planning import Upserts


def broken(self, entry):
    raise RuntimeError("a bug in the planner")


Upserts._entry = broken
source, reports = sys.argv[1:]
config = Config(inputs=(source,), emulator=True, reports_dir=Path(reports), progress="off")
print("returned", commands.execute("run", config), flush=True)
"""


def test_a_caller_of_a_run_of_a_file_that_crashed_gets_its_exit_code_back(
    tmp_path: Path,
) -> None:
    """The shell left the process by os._exit whenever the input's thread was alive,
    which only a thread blocked reading stdin calls for: a run of a file that crashed
    while its thread waited for room killed the caller of commands.execute (pytest,
    once)."""
    _inventory, source = inventory_file(tmp_path, 20_000, 4, seed=58)
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_IN_PROCESS, str(source), str(tmp_path / "r")],
        capture_output=True, text=True, env=cli_env(), timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout == "returned 70\n", done.stderr[-2000:]


async def test_resume_takes_the_latest_pointer(tmp_path: Path) -> None:
    _inventory, source = inventory_file(tmp_path, 200, 2, seed=53)
    first = await run_cli(["run", str(source), "--emulator", "--rate", "500"], tmp_path / "r")
    latest = tmp_path / "r" / "latest"
    again = await run_cli(
        ["run", str(source), "--emulator", "--resume", str(latest)], tmp_path / "r"
    )
    assert again.code == 0, again.stderr
    assert again.summary["run_id"] == first.summary["run_id"]
    assert again.summary["already_landed"] == 200
    assert again.summary["requests"]["sent"] == 0  # type: ignore[index]


# -- reports that round-trip ---------------------------------------------------------------


async def test_feeding_errors_back_never_overwrites_a_winner_and_cells_come_back_whole(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,weight,note,source,line,outcome\n"
        "p,i,c,10.0.0.1,38,=SUM(A1),cmdb,7,ok\n"       # the winner
        "p,i,c,10.0.0.1,99,+49,cmdb,8,ok\n"            # loses to line 2
        "p,i,c,10.0.0.300,1,-5,cmdb,9,ok\n"            # invalid
    )  # fmt: skip
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        base = ["--endpoint", emulator.url, "--rate", "500"]
        first = await run_cli(["run", str(source), *base], tmp_path / "r0")
        fed, rounds = first.run_dir / "errors.csv", []
        for number in range(1, 4):
            done = await run_cli(["run", str(fed), *base], tmp_path / f"r{number}")
            rounds.append(done)
            fed = done.run_dir / "errors.csv"
        state = await get_json(emulator.url + "/_emulator/state")
    weights = [m["weight"] for c in state["channels"] for m in c["members"]]  # type: ignore[attr-defined]
    assert weights == [38]  # the loser never landed, however often it was fed back
    for done in rounds:
        assert done.code == 4, done.stderr
        assert done.summary["requests"]["sent"] == 0  # type: ignore[index]
        # Cell for cell the same file each time round: no quote piles up on '+49 or '-5.
        assert [r["note"] for r in done.report("errors.csv")] == ["'+49", "'-5"]
        assert [r["duplicate_of"] for r in done.report("errors.csv")] == [f"{source}:2", ""]
    # The user's own columns named like the report's are kept, under user.
    landed = first.report("succeeded.csv")[0]
    assert (landed["user.source"], landed["user.line"], landed["user.outcome"]) == (
        "cmdb",
        "7",
        "ok",
    )
    assert [r["user.line"] for r in rounds[-1].report("errors.csv")] == ["8", "9"]


async def _fed_back(
    emulator: Emulator,
    directory: Path,
    source: Path,
    report_format: str,
    edit: Callable[[str], str] = str,
) -> tuple[Finished, Finished]:
    """A run of ``source`` reporting in ``report_format``, then a run of its errors report,
    as ``edit`` leaves it, fed back."""
    base = ["--endpoint", emulator.url, "--rate", "500"]
    first = await run_cli(
        ["run", str(source), *base, "--report-format", report_format], directory / "first"
    )
    fed = directory / f"fed.{report_format}"
    fed.write_text(edit((first.run_dir / f"errors.{report_format}").read_text()))
    return first, await run_cli(["run", str(fed), *base], directory / "again")


async def test_the_keys_of_ndjson_rows_come_back_from_a_csv_report_fed_back(
    tmp_path: Path,
) -> None:
    # A CSV report keeps an NDJSON row's own keys as one JSON object, under extra.
    source = tmp_path / "in.ndjson"
    source.write_bytes(
        b'{"project_id":"p","instance_id":"i","vpc_channel_id":"c","host":"10.0.0.1",'
        b'"port":99999,"owner":"ann","tags":{"env":"prod"},"source":"cmdb"}\n'
    )

    def fixed(text: str) -> str:
        return text.replace(",99999,", ",80,")

    def broken(text: str) -> str:
        return fixed(text).replace('""owner""', '""owner')

    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        first, second = await _fed_back(emulator, tmp_path / "a", source, "csv", fixed)
        _, third = await _fed_back(emulator, tmp_path / "b", source, "csv", broken)
    # Its one row invalid, the first run had no valid row (5).
    assert first.code == 5 and second.code == 0, second.stderr
    (landed,) = second.report("succeeded.csv")
    assert orjson.loads(landed["extra"]) == {
        "owner": "ann",
        "tags": {"env": "prod"},
        "user.source": "cmdb",
    }
    # An extra cell broken by hand is said, not dropped.
    assert third.code == 5  # its one row invalid: no valid row
    (refused,) = third.report("errors.csv")
    assert "extra cell that is not a JSON object" in refused["error_msg"]


async def test_a_row_with_cells_past_its_header_fed_back_unfixed_is_refused_again(
    tmp_path: Path,
) -> None:
    # Cells shifted by an unquoted comma: cut to the header's width, the row would land
    # with a weight it never had.
    source = tmp_path / "in.csv"
    source.write_text(
        "project_id,instance_id,vpc_channel_id,host,member_group_name,weight\n"
        "p,i,c,10.0.0.1,grp,1,5\n"
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        first, again = await _fed_back(emulator, tmp_path / "a", source, "csv")
        as_json, json_again = await _fed_back(emulator, tmp_path / "b", source, "ndjson")
        state = await get_json(emulator.url + "/_emulator/state")
    assert not [m for c in state["channels"] for m in c["members"]]  # type: ignore[attr-defined]
    for done in (first, again, as_json, json_again):
        assert done.code == 5, done.stderr  # one row, invalid: no valid row
        assert done.summary["requests"]["sent"] == 0  # type: ignore[index]
    # The CSV report holds the row's every cell, the last after its columns.
    (line,) = (first.run_dir / "errors.csv").read_text().splitlines()[1:]
    assert line.endswith(",p,i,c,10.0.0.1,,1,,grp,,,,5"), line
    assert (again.run_dir / "errors.csv").read_text().splitlines()[1].endswith(",grp,,,,5")
    (row,) = as_json.report("errors.ndjson")
    assert row["cells_past_header"] == ["5"]
    (row,) = json_again.report("errors.ndjson")
    assert "past its CSV header" in row["error_msg"]


@pytest.mark.parametrize("report_format", ["csv", "ndjson"])
async def test_a_row_that_was_not_utf8_fed_back_unfixed_is_refused_again(
    tmp_path: Path, report_format: str
) -> None:
    # The report writes U+FFFD for the bad byte: landed, the stand-in would be the value.
    source = tmp_path / "in.csv"
    source.write_bytes(
        b"project_id,instance_id,vpc_channel_id,host,member_group_name,note\n"
        b"p,i,c,10.0.0.1,g1,CI\xff1\n"
    )
    async with Emulator(EmulatorConfig(tokens=(TOKEN,), auto_create=True)) as emulator:
        first, again = await _fed_back(emulator, tmp_path, source, report_format)
    assert first.code == again.code == 5, again.stderr  # one invalid row
    assert "\ufffd" in (first.run_dir / f"errors.{report_format}").read_text()
    (row,) = again.report(f"errors.{report_format}")
    assert "holds U+FFFD" in row["error_msg"]
