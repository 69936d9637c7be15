"""``vpc-members merge``: the shards of one inventory joined into one set of reports.

Runs belong together when they ran the same command on the same inputs (same paths, same
content) with the same options, each with ``--shard I/N`` for one N, every index present
once, and each finished (its ``summary.json`` written). The merged directory holds each
report kind concatenated in shard order, and a ``summary.json`` whose counts are the sums
(so its row total is the input's row count) and whose exit code is the most urgent of the
shards'.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from worker import manifest
from worker.exits import ExitCode, most_urgent
from worker.outcomes import StopReason
from worker.reports import write_json_atomic
from worker.runner import Summary, new_run_id
from worker.shards import Shard, parse_shard

_KINDS = ("succeeded", "errors", "extras", "channels")


class MergeError(Exception):
    """Runs that cannot be merged, and why."""


def _load(run: Path) -> tuple[manifest.Manifest, dict[str, Any]]:
    try:
        recorded = manifest.load(run)
    except manifest.ManifestError as exc:
        raise MergeError(str(exc)) from None
    try:
        summary: dict[str, Any] = orjson.loads((run / "summary.json").read_bytes())
    except FileNotFoundError:
        raise MergeError(
            f"{run} has no summary.json: the shard is still running or stopped early; "
            "--resume it first"
        ) from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise MergeError(f"{run}/summary.json: unreadable ({exc})") from None
    return recorded, summary


def _shard(run: Path, recorded: manifest.Manifest) -> Shard:
    text = recorded.decisions.get("shard")
    if not isinstance(text, str):
        raise MergeError(f"{run} was not run with --shard")
    try:
        return parse_shard(text, {})
    except ValueError as exc:
        raise MergeError(f"{run}/run.json: shard {exc}") from None


def check(
    runs: Sequence[Path], loaded: Sequence[tuple[manifest.Manifest, Mapping[str, Any]]]
) -> list[Shard]:
    """The runs' shards, in run order; MergeError when they do not belong together."""
    if not runs:
        raise MergeError("name the run directories of the shards")
    first, _ = loaded[0]
    shards = []
    for run, (recorded, _summary) in zip(runs, loaded, strict=True):
        shard = _shard(run, recorded)
        keys = (set(recorded.decisions) | set(first.decisions)) - {"shard"}
        same = all(recorded.decisions.get(k) == first.decisions.get(k) for k in keys)
        if recorded.command != first.command or recorded.inputs != first.inputs or not same:
            raise MergeError(
                f"{run} did not run the same command on the same inputs with the same "
                f"options as {runs[0]}"
            )
        shards.append(shard)
    counts = {shard.count for shard in shards}
    if len(counts) != 1:
        raise MergeError(f"the runs split the inventory differently: {sorted(counts)} shards")
    (count,) = counts
    seen = Counter(shard.index for shard in shards)
    twice = sorted(index for index, n in seen.items() if n > 1)
    missing = sorted(set(range(count)) - set(seen))
    if twice:
        raise MergeError(f"shard(s) {twice} of {count} given twice")
    if missing:
        raise MergeError(f"shard(s) {missing} of {count} missing: their rows would be lost")
    return shards


def merge_runs(given: Sequence[Path | str], out: Path | str) -> Summary:
    runs = [Path(run) for run in given]
    out = Path(out)
    loaded = [_load(run) for run in runs]
    shards = check(runs, loaded)
    order = sorted(range(len(runs)), key=lambda i: shards[i].index)
    formats = {
        suffix
        for run in runs
        for suffix in ("csv", "ndjson")
        if (run / f"errors.{suffix}").exists()
    }
    if len(formats) > 1:
        raise MergeError("the runs wrote their reports in different formats (--report-format)")
    out.mkdir(mode=0o700, parents=False)
    paths = []
    for kind in _KINDS:
        for suffix in ("csv", "ndjson"):
            parts = [runs[i] / f"{kind}.{suffix}" for i in order]
            present = [p for p in parts if p.exists()]
            if present:
                paths.append(_concatenate(present, out / f"{kind}.{suffix}", suffix == "csv"))
    summaries = [loaded[i][1] for i in order]
    merged = Summary(
        run_id=f"merged-{new_run_id()}",
        command=str(summaries[0]["command"]),
        run_dir=out,
        exit_code=most_urgent(ExitCode(s["exit_code"]) for s in summaries),
        started_at=min(str(s["started_at"]) for s in summaries),
        finished_at=max(str(s["finished_at"]) for s in summaries),
        elapsed_seconds=max(float(s["elapsed_seconds"]) for s in summaries),
        inputs=list(summaries[0]["inputs"]),
        dry_run=bool(summaries[0].get("dry_run")),
        rows=_sum(s["rows"] for s in summaries),
        actions=_sum(s["actions"] for s in summaries),
        already_landed=sum(int(s["already_landed"]) for s in summaries),
        extras=_sum(s["extras"] for s in summaries) if summaries[0]["extras"] is not None else None,
        requests={
            **{
                name: sum(int(s["requests"].get(name, 0)) for s in summaries)
                for name in ("sent", "retried", "split")
            },
            **{
                name: _sum(s["requests"].get(name, {}) for s in summaries)
                for name in ("by_status", "by_operation")
            },
            "shards": [
                {
                    "shard": str(shards[i]),
                    # The run itself, not a `latest` link to it, which moves on with the
                    # shard's next run: which run was merged must be told afterwards.
                    "run_dir": str(runs[i].resolve()),
                    "run_id": s["run_id"],
                    "started_at": s["started_at"],
                    "exit_code": s["exit_code"],
                }
                for i, s in zip(order, summaries, strict=True)
            ],
        },
        distinct_addresses=sum(int(s["distinct_addresses"]) for s in summaries),
        rows_read=max(int(s.get("rows_read", 0)) for s in summaries),
        stop_reason=next(
            (StopReason(s["stop_reason"]) for s in summaries if s["stop_reason"]), None
        ),
        reports=[str(path) for path in paths],
        # What the shards say of the run as a whole: the endpoint they share (their
        # run.json agree on it), the first stop's detail, the input's and reports' errors.
        endpoint=summaries[0].get("endpoint"),
        stop_detail=_first(summaries, "stop_detail"),
        input_error=_first(summaries, "input_error"),
        reports_error=_first(summaries, "reports_error"),
    )
    write_json_atomic(out / "summary.json", merged.to_json())
    return merged


def _first(summaries: Sequence[Mapping[str, Any]], name: str) -> Any:
    """The first shard's value of ``name`` that is set, or None."""
    return next((s[name] for s in summaries if s.get(name)), None)


def _sum(parts: Any) -> dict[str, int]:
    total: Counter[str] = Counter()
    for part in parts:
        total.update({key: int(value) for key, value in dict(part).items()})
    return dict(total)


def _concatenate(parts: Sequence[Path], target: Path, csv_header: bool) -> Path:
    """Append the parts into ``target``; CSV parts must share one header, kept once."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as sink:
        header: bytes | None = None
        for part in parts:
            with part.open("rb") as source:
                if csv_header:
                    first = source.readline()
                    if not first:  # a table of no rows (a shard with no channel) is empty
                        continue
                    if header is None:
                        header = first
                        sink.write(first)
                    elif first != header:
                        raise MergeError(f"{part}: its columns differ from {parts[0]}'s")
                while chunk := source.read(1024 * 1024):
                    sink.write(chunk)
    return target
