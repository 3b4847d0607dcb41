"""Where a request stands in the fleet-wide queue: its tenant, priority band and weight,
and its key's fleet-wide concurrency limit.

Managed keys carry these (``llm-router keys create --tenant --priority --weight
--max-in-flight``); settings keys and the open demo are one default tenant. A request may
lower its band with ``x-llm-router-priority``, never raise it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from llm_router.errors import InvalidRequest

MAX_PRIORITY = 9
#: The middle band: keys without a priority, and every settings key, sit here, so an
#: operator can put a key both above and below them.
DEFAULT_PRIORITY = 5
DEFAULT_TENANT = "default"
MAX_WEIGHT = 1000
PRIORITY_HEADER = "x-llm-router-priority"


@dataclass(frozen=True)
class Tenancy:
    tenant: str = DEFAULT_TENANT
    priority: int = DEFAULT_PRIORITY
    weight: int = 1
    #: The key's id when it has a fleet-wide limit on requests in flight (else "").
    key_id: str = ""
    #: At most this many of the key's requests in flight across the fleet (0: no limit).
    max_in_flight: int = 0
    #: Over the limit: refuse with 429 instead of waiting for one of its own to finish.
    refuse_over_limit: bool = False

    def for_request(self, headers: Mapping[str, str]) -> Tenancy:
        """This tenancy as a request's headers lower it (a request never raises it)."""
        raw = headers.get(PRIORITY_HEADER)
        if raw is None:
            return self
        try:
            asked = int(raw.strip())
        except ValueError:
            asked = -1
        if not 0 <= asked <= MAX_PRIORITY:
            raise InvalidRequest(
                f"'{PRIORITY_HEADER}' must be an integer from 0 to {MAX_PRIORITY}",
                param=PRIORITY_HEADER,
            )
        return replace(self, priority=min(self.priority, asked))


DEFAULT_TENANCY = Tenancy()
