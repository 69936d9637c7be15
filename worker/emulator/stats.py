"""Counters of what the emulator answered, served at ``GET /_emulator/stats``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Stats:
    """Counts over API requests (the ``/_emulator`` endpoints are not counted).

    ``by_status`` counts answers given; a reset connection has none and shows only under
    ``faults["reset"]``. ``faults["conflict"]`` counts writes refused because another
    write to their channel was in progress. ``tokens_issued`` counts IAM logins.
    """

    by_method: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    members_created: int = 0
    members_updated: int = 0
    members_deleted: int = 0
    throttled: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0

    @property
    def requests(self) -> int:
        return sum(self.by_method.values())

    def to_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "requests_by_method": dict(self.by_method),
            "responses_by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "members_created": self.members_created,
            "members_updated": self.members_updated,
            "members_deleted": self.members_deleted,
            "throttled": self.throttled,
            "faults": {str(k): v for k, v in self.faults.items()},
            "tokens_issued": self.tokens_issued,
        }
