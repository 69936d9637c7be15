"""What a run directory ran on, so that ``--resume`` can refuse what would make it lie.

``run.json`` records each input's resolved path, size and SHA-256, and the options that
change decisions (which rows are whose, where they go). A resume compares them with what it
is given: the same file under any spelling of its path is the same input; a file whose
content changed, or a changed option, is refused with what differs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from io import BufferedReader
from pathlib import Path
from typing import Final

import orjson

from worker.inventory import STDIN, Input, InputError

VERSION: Final = 1
NAME: Final = "run.json"
_HASH_CHUNK: Final = 8 << 20


class ManifestError(Exception):
    """A run directory that cannot be resumed with these inputs and options."""


@dataclass(frozen=True, slots=True)
class InputPrint:
    """One input as a run saw it: the name its rows were reported under, where it was,
    and what it held."""

    name: str
    path: str | None
    size: int | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class Manifest:
    command: str
    run_id: str
    inputs: tuple[InputPrint, ...]
    decisions: Mapping[str, object] = field(default_factory=dict)
    version: int = VERSION

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["decisions"] = dict(self.decisions)
        return data


def fingerprint(source: Input) -> InputPrint:
    """Resolve an input's path and hash its bytes (stdin cannot be hashed ahead)."""
    if source.path == STDIN:
        return InputPrint(source.name, None, None, None)
    path = Path(source.path).resolve()
    try:
        with path.open("rb") as handle:
            digest = _sha256(handle)
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise InputError(source.name, exc.strerror or str(exc)) from None
    return InputPrint(source.name, str(path), size, digest)


def _sha256(handle: BufferedReader) -> str:
    """The hex SHA-256 of what ``handle`` holds. Read and hashed in chunks large enough
    that a thread doing it while another reads the input (``plan``) takes the GIL back,
    which reading and hashing release, a few times a file rather than at every chunk."""
    digest = hashlib.sha256()
    chunk = bytearray(_HASH_CHUNK)
    view = memoryview(chunk)
    while read := handle.readinto(chunk):
        digest.update(view[:read])
    return digest.hexdigest()


def differences(recorded: Manifest, current: Manifest) -> list[str]:
    """Why ``current`` cannot resume ``recorded``, one reason a line; empty when it can."""
    found: list[str] = []
    if recorded.command != current.command:
        found.append(f"the run was a {recorded.command!r}, this is a {current.command!r}")
    if len(recorded.inputs) != len(current.inputs):
        found.append(
            f"the run read {len(recorded.inputs)} input(s), this names {len(current.inputs)}"
        )
    pairs = zip(recorded.inputs, current.inputs, strict=False)
    for number, (was, now) in enumerate(pairs, start=1):
        if was.path is None or now.path is None:
            found.append(f"input {number} is stdin, which cannot be checked: save it to a file")
        elif was.path != now.path:
            found.append(f"input {number} was {was.path}, this is {now.path}")
        elif (was.size, was.sha256) != (now.size, now.sha256):
            found.append(f"input {number} ({now.path}) changed since the run began")
    for key in sorted(set(recorded.decisions) | set(current.decisions)):
        was_value, now_value = recorded.decisions.get(key), current.decisions.get(key)
        if was_value != now_value:
            found.append(f"{key} was {was_value!r}, now {now_value!r}")
    return found


def load(directory: Path) -> Manifest:
    path = directory / NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as handle:
            data = orjson.loads(handle.read())
        inputs = tuple(InputPrint(**item) for item in data["inputs"])
        manifest = Manifest(
            str(data["command"]), str(data["run_id"]), inputs, dict(data["decisions"])
        )
        if data.get("version") != VERSION:
            raise ManifestError(f"{path}: written by another version ({data.get('version')})")
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; is this a run directory?") from None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from None
    return manifest


def inputs_of(sources: Sequence[Input], recorded: Manifest | None) -> list[Input]:
    """The inputs to read, named as the recorded run named them (when resuming)."""
    if recorded is None:
        return list(sources)
    return [
        Input(source.path, source.format, source.gzip, was.name)
        for source, was in zip(sources, recorded.inputs, strict=False)
    ] + list(sources[len(recorded.inputs) :])
