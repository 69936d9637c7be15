"""One run at a time: an advisory lock that dies with its holder."""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType


class LockBusy(Exception):
    """Another live process holds the lock; the message names its pid and start time."""


class RunLock:
    """An exclusive ``flock`` on ``path``, holding the holder's pid and start time.

    The kernel drops the lock when its process dies, however it dies, so a stale lock
    file left by a crashed run never blocks the next one.
    """

    __slots__ = ("_fd", "path", "what")

    def __init__(self, path: Path, what: str = "lock file") -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        # Never through a symbolic link: another user could plant one at a shared path,
        # and truncating the holder line would truncate whatever it points to.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise OSError(f"{self.what} {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown holder"
            os.close(fd)
            raise LockBusy(f"another run holds the lock {self.path} ({holder}); exiting") from None
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
