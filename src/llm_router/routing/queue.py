"""Wake-ups for requests waiting in the fleet-wide queue.

The queue itself lives in Redis (``acquire.lua`` keeps its fair order); this module only
decides *when* a local waiter asks again. One pub/sub subscription per replica hears
"capacity freed for model M" and wakes this replica's first waiter for M in that order
(the smallest place tag, which never changes while it waits, then the ticket, as the
sorted set breaks ties): the only one here that can be at the head. The same channel
carries the tickets shed from a full queue, each waking its own waiter. A bounded
fallback poll covers lost messages, a pub/sub reconnect, and heads whose replica died
(their tickets expire, nobody publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Names whose events are counted (see ``CapacityEvents.heard``) before the counts restart.
_MAX_HEARD = 4096


@dataclass(order=True)
class Waiter:
    #: The ticket's place tag in the fleet-wide order (see ``Queued.order``).
    order: int
    #: Breaks ties between equal tags as the queue's sorted set does (by member), so the
    #: first local waiter is the one the queue serves first; and two waiters are only equal
    #: when they are the same ticket.
    ticket: str
    model: str = field(compare=False)
    wake: asyncio.Event = field(compare=False, default_factory=asyncio.Event)
    abandoned: bool = field(compare=False, default=False)
    tenant: str = field(compare=False, default="")
    band: int = field(compare=False, default=0)


class CapacityEvents:
    """This replica's waiters, keyed by model, and the subscription that wakes them."""

    def __init__(self, pubsub_client: Any, channel: str) -> None:
        self._client = pubsub_client
        self._channel = channel
        self._waiters: dict[str, list[Waiter]] = defaultdict(list)
        #: Events heard per model, ever: a request notes the count before its acquire call
        #: so that one heard while the call was out (nobody here to wake yet) is not lost.
        self._heard: dict[str, int] = defaultdict(int)
        #: This replica's waiters by ticket: a ticket on the channel wakes that one waiter.
        self._by_ticket: dict[str, Waiter] = {}
        self._task: asyncio.Task[None] | None = None

    def heard(self, model: str) -> int:
        return self._heard[model]

    def add(self, waiter: Waiter, heard_before: int | None = None) -> None:
        """Wait here; ``heard_before`` is ``heard(model)`` from before the acquire call that
        queued it: capacity freed since then reached nobody, so a new local head looks at
        once instead of at the next poll."""
        waiters = self._waiters[waiter.model]
        waiters.append(waiter)
        waiters.sort()
        self._by_ticket[waiter.ticket] = waiter
        missed = heard_before is not None and self._heard[waiter.model] != heard_before
        if missed and waiters[0] is waiter:
            waiter.wake.set()

    def remove(self, waiter: Waiter) -> None:
        self._by_ticket.pop(waiter.ticket, None)
        waiters = self._waiters.get(waiter.model)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[waiter.model]
            else:
                # The next local waiter may now be the head: let it look.
                waiters[0].wake.set()

    def reorder(self, waiter: Waiter, order: int) -> None:
        if waiter.order != order:
            waiter.order = order
            self._waiters[waiter.model].sort()

    def tickets(self) -> list[tuple[str, str]]:
        return [(w.model, w.ticket) for ws in self._waiters.values() for w in ws]

    def waiting(self) -> int:
        return sum(len(ws) for ws in self._waiters.values())

    def waiting_by_tenant(self) -> dict[tuple[str, int], int]:
        counts: dict[tuple[str, int], int] = defaultdict(int)
        for waiters in self._waiters.values():
            for waiter in waiters:
                counts[(waiter.tenant, waiter.band)] += 1
        return dict(counts)

    def notify(self, name: str) -> None:
        """``name`` is a model whose capacity was freed: this replica's first waiter for it
        looks. Or it is a ticket the queue let go of (shed from a full queue): its waiter
        looks, wherever it stands, and hears so at once."""
        shed = self._by_ticket.get(name)
        if shed is not None:
            shed.wake.set()
            return
        if len(self._heard) >= _MAX_HEARD:
            # Other replicas' tickets count here as names too; forgetting the counts only
            # makes a request that is joining the queue right now look once more.
            self._heard.clear()
        self._heard[name] += 1
        waiters = self._waiters.get(name)
        if waiters:
            waiters[0].wake.set()

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="capacity-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self.notify(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store went away: the fallback poll carries on
                log.warning("capacity events: subscription lost (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
