"""List paging as the service does it: ``offset`` and ``limit`` query values to a window.

Pure. The rules (the SDK's ``ListBackendInstancesV2Request`` and the vendor's API pages):
``limit`` missing, 0 or less means 20, over 500 means 500; ``offset`` missing or below 0
means 0. A value that is not a whole number (or does not fit 64 bits) is refused with
400 APIG.2012, as the service refuses any malformed parameter.
"""

from __future__ import annotations

import re
from typing import Final

from worker.emulator import errors
from worker.members import PAGE_LIMIT

DEFAULT_LIMIT: Final = 20
_WHOLE: Final = re.compile(r"[+-]?[0-9]{1,18}")


def window(offset: str | None, limit: str | None) -> tuple[int, int]:
    """(offset, limit) for the query's values; raises ApiError for a malformed one."""
    first = _whole(offset, "offset")
    size = _whole(limit, "limit")
    if size is None or size <= 0:
        size = DEFAULT_LIMIT
    return max(0, first or 0), min(size, PAGE_LIMIT)


def _whole(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    if _WHOLE.fullmatch(text) is None:
        raise errors.invalid(name)
    return int(text)
