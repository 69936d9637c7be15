"""vpc-members: load backend servers into API-gateway VPC channels, and report every row.

The Python API (see :mod:`worker.runner`)::

    import asyncio
    from worker import Config, run

    summary = asyncio.run(run(Config(inputs=("servers.csv",), endpoint="https://...")))

Names are imported on first use, so ``vpc-members --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from worker.config import Config
    from worker.exits import ExitCode
    from worker.runner import Summary, plan, run, sync

__all__ = ["Config", "ExitCode", "Summary", "__version__", "plan", "run", "sync"]

_HOMES = {
    "Config": "worker.config",
    "ExitCode": "worker.exits",
    "Summary": "worker.runner",
    "plan": "worker.runner",
    "run": "worker.runner",
    "sync": "worker.runner",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
