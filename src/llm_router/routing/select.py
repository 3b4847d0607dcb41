"""Acquire a lease on a capable node (waiting in the fleet-wide queue if needed), renew
what this replica holds, release it when the request ends.

The choice and the reservation are one Redis script (``acquire.lua``); this module adds
the waiting, the mapping of refusals to errors, and the keep-alive of leases and tickets.
The local dict of leases exists only to renew them: if this replica dies, Redis lets them
expire on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from llm_router.errors import (
    ClientClosedRequest,
    KeyInFlightLimit,
    ModelNotFound,
    NoCapableNodes,
    NotImplementedByFleet,
    QueueFull,
    QueueTimeout,
    ResponseNotFound,
    RouterError,
    ShuttingDown,
)
from llm_router.routing.ids import new_id
from llm_router.routing.node_hop import node_credential
from llm_router.routing.queue import CapacityEvents, Waiter
from llm_router.state.scripts import (
    NO_AFFINITY,
    Affinity,
    Ending,
    FailureReport,
    FleetScripts,
    Granted,
    KeyWait,
    Queued,
    Refused,
)
from llm_router.tenancy import DEFAULT_TENANCY, Tenancy

log = logging.getLogger(__name__)

#: Node addresses whose origin and credential are kept (see ``Dispatcher._reached``).
_REACH_MAX = 20_000


@dataclass(frozen=True)
class Limits:
    lease_ttl_ms: int
    queue_max: int
    queue_timeout_s: float
    ticket_ttl_ms: int
    forget_ms: int
    retry_after_s: float
    poll_interval_s: float = 0.5
    response_ttl_ms: int = 24 * 3600 * 1000


@dataclass(frozen=True)
class Want:
    """What a request needs from a node besides the model: an endpoint family the node has
    not declined lately, and (for a stored response) the one node that holds it."""

    family: str = ""
    response_id: str = ""
    #: Nodes this request already failed on: never picked for it again.
    avoid: tuple[str, ...] = ()


ANY = Want()


# Read-only like ``proxy.Call``, and not frozen for the same reason.
@dataclass(slots=True)
class Lease:
    lease_id: str
    node_id: str
    url: str
    queued_ms: float | None
    #: What affinity did (see ``Granted.affinity``); "" when the request had no keys.
    affinity: str = ""
    #: Sent to the node with the request: its credential (BRIEF §11). Never logged.
    node_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Where a request that waited first stood in the queue (1 = next), and its band.
    queue_position: int = 0
    band: int = 0
    tenant: str = ""


class Dispatcher:
    def __init__(self, scripts: FleetScripts, events: CapacityEvents, limits: Limits) -> None:
        self._scripts = scripts
        self._events = events
        self._limits = limits
        self._leases: dict[str, str] = {}
        self._reach: dict[tuple[str, str, int, str], tuple[str, Mapping[str, str]]] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Leases ended but not yet released in Redis, and the flush sending them (one at most).
        self._ending: list[Ending] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._flushing = False
        self.closing = False

    @property
    def held(self) -> int:
        return len(self._leases)

    async def acquire(
        self,
        model: str,
        client_gone: Callable[[], Awaitable[object]] | None = None,
        want: Want = ANY,
        affinity: Affinity = NO_AFFINITY,
        tenancy: Tenancy = DEFAULT_TENANCY,
    ) -> Lease:
        """A lease on a node for ``model``, queueing if needed.

        ``client_gone`` resolves when the client disconnects; it is only watched while the
        request waits in the queue, so the common path costs nothing extra. ``affinity``
        carries the request's pins, read and moved by the same script call; ``tenancy`` its
        place in the fair order of the queue.
        """
        if self.closing:
            raise ShuttingDown("this router replica is shutting down", retry_after_s=1)
        ticket = new_id()
        heard = self._events.heard(model)
        result = await self._try(model, ticket, want, affinity, tenancy)
        if isinstance(result, Granted):
            return self._hold(result, queued_ms=None)
        if isinstance(result, Refused):
            raise self._refusal(model, result, want)
        return await self._wait(model, ticket, result, client_gone, want, affinity, tenancy, heard)

    async def _try(
        self, model: str, ticket: str, want: Want, affinity: Affinity, tenancy: Tenancy
    ) -> Granted | Queued | KeyWait | Refused:
        return await self._scripts.acquire(
            model=model,
            lease_id=new_id(),
            lease_ttl_ms=self._limits.lease_ttl_ms,
            ticket=ticket,
            queue_max=self._limits.queue_max,
            ticket_ttl_ms=self._limits.ticket_ttl_ms,
            forget_ms=self._limits.forget_ms,
            family=want.family,
            response_id=want.response_id,
            affinity=affinity,
            avoid=want.avoid,
            tenancy=tenancy,
        )

    def _hold(
        self,
        granted: Granted,
        queued_ms: float | None,
        tenancy: Tenancy = DEFAULT_TENANCY,
        position: int = 0,
    ) -> Lease:
        address = (granted.scheme, granted.ip_address, granted.port, granted.secret)
        reached = self._reach.get(address)
        if reached is None:
            reached = self._reached(address)
        lease = Lease(
            lease_id=granted.lease_id,
            node_id=granted.node_id,
            url=reached[0],
            queued_ms=queued_ms,
            affinity=granted.affinity,
            node_headers=reached[1],
            queue_position=position,
            band=tenancy.priority,
            tenant=tenancy.tenant,
        )
        self._leases[lease.lease_id] = lease.node_id
        return lease

    def _reached(self, address: tuple[str, str, int, str]) -> tuple[str, Mapping[str, str]]:
        """A node's origin and credential header, built once per (address, secret) rather
        than per lease; the table is emptied when it outgrows any fleet (moved and
        re-keyed nodes leave old entries behind)."""
        if len(self._reach) >= _REACH_MAX:
            self._reach.clear()
        scheme, ip, port, secret = address
        reached = (
            f"{scheme}://{_host(ip)}:{port}",
            MappingProxyType(dict(node_credential(secret))),
        )
        self._reach[address] = reached
        return reached

    def _refusal(self, model: str, refused: Refused, want: Want) -> RouterError:
        if refused.reason == "response_gone":
            return ResponseNotFound(
                f"No response found with id '{want.response_id}' (the node that stored it "
                "is gone, or the id is unknown or expired)",
                param="previous_response_id",
            )
        if refused.reason == "unsupported":
            return NotImplementedByFleet(
                f"No node serving model '{model}' supports the '{want.family}' endpoints"
            )
        if refused.reason == "not_found":
            return ModelNotFound(f"The model '{model}' does not exist", param="model")
        if refused.reason == "key_busy":
            return KeyInFlightLimit(
                f"This key already has {refused.queue_length} requests in flight across the "
                "fleet, its limit; retry later",
                retry_after_s=self._limits.retry_after_s,
            )
        if refused.reason == "shed":
            return QueueFull(
                f"This request's place in the queue for model '{model}' went to a request "
                "of a higher priority (the queue is full); retry later",
                retry_after_s=self._limits.retry_after_s,
            )
        if refused.reason == "queue_full":
            return QueueFull(
                f"Too many requests are queued for model '{model}' "
                f"({refused.queue_length}); retry later",
                retry_after_s=self._limits.retry_after_s,
            )
        return NoCapableNodes(
            f"No online node can currently run model '{model}'",
            retry_after_s=self._limits.retry_after_s,
            param="model",
        )

    async def _wait(
        self,
        model: str,
        ticket: str,
        queued: Queued | KeyWait,
        client_gone: Callable[[], Awaitable[object]] | None,
        want: Want,
        affinity: Affinity,
        tenancy: Tenancy,
        heard: int,
    ) -> Lease:
        started = time.monotonic()
        deadline = started + self._limits.queue_timeout_s
        # Waiting on its key's own limit, the request holds no place in the queue: it sorts
        # after this replica's queued waiters and looks again at each poll.
        order = queued.order if isinstance(queued, Queued) else _NOT_QUEUED
        waiter = Waiter(
            order=order, ticket=ticket, model=model, tenant=tenancy.tenant, band=tenancy.priority
        )
        self._events.add(waiter, heard_before=heard)
        watcher = None
        if client_gone is not None:
            watcher = asyncio.ensure_future(self._watch(client_gone, waiter))
        granted = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueTimeout(
                        f"Timed out after {self._limits.queue_timeout_s:g}s waiting for a "
                        f"free node for model '{model}'"
                    )
                if self.closing:
                    raise ShuttingDown("this router replica is shutting down", retry_after_s=1)
                if waiter.abandoned:
                    raise ClientClosedRequest("the client disconnected while queued")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._limits.poll_interval_s)):
                        await waiter.wake.wait()
                waiter.wake.clear()
                if waiter.abandoned:
                    continue
                result = await self._try(model, ticket, want, affinity, tenancy)
                if isinstance(result, Granted):
                    granted = True
                    waited_ms = (time.monotonic() - started) * 1000
                    position = queued.position if isinstance(queued, Queued) else 0
                    return self._hold(result, waited_ms, tenancy, position)
                if isinstance(result, Refused):
                    granted = True  # the script already took the ticket out
                    raise self._refusal(model, result, want)
                # Queued anew after waiting on its key (or back to that wait): a new place.
                self._events.reorder(
                    waiter, result.order if isinstance(result, Queued) else _NOT_QUEUED
                )
        finally:
            if watcher is not None:
                watcher.cancel()
            self._events.remove(waiter)
            if not granted:
                # Timeout, shutdown or the client went away: free our place at once. Shielded
                # so that a cancelled request still leaves the queue.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._scripts.leave_queue(model=model, ticket=ticket))

    @staticmethod
    async def _watch(client_gone: Callable[[], Awaitable[object]], waiter: Waiter) -> None:
        with contextlib.suppress(Exception):
            await client_gone()
            waiter.abandoned = True
            waiter.wake.set()

    async def release(self, lease: Lease, ending: Ending | None = None) -> None:
        """Release now and wait for it: a failover must not pick the excluded node again,
        and a recorded response id must be in Redis before its client can name it."""
        self._leases.pop(lease.lease_id, None)
        try:
            await self._scripts.release_many(
                [ending or Ending(lease.node_id, lease.lease_id)], self._limits.response_ttl_ms
            )
        except RouterError as exc:
            # The lease expires by itself; nothing is lost but a little capacity for a while.
            log.warning("could not release lease %s on %s: %s", lease.lease_id, lease.node_id, exc)

    async def release_failed(self, lease: Lease | None, report: FailureReport) -> bool:
        """End a failed attempt's lease and report the failure, waiting for it: the next
        attempt must see an exclusion it caused. ``lease`` None: only withdraw evidence.
        True when the (node, model) pair is now excluded."""
        if lease is not None:
            self._leases.pop(lease.lease_id, None)
        try:
            return await self._scripts.fail(
                node_id=lease.node_id if lease else "",
                lease_id=lease.lease_id if lease else "",
                report=report,
            )
        except RouterError as exc:
            # The lease expires by itself; nothing is lost but a little capacity for a while.
            log.warning("could not report a failed attempt (%s): %s", lease, exc)
            return False

    def release_soon(self, lease: Lease, ending: Ending | None = None) -> None:
        """End a lease without making the client wait for Redis.

        One flush at a time sends every lease ended so far in one script call; leases that
        end while it waits for Redis go out together in its next call. A busy replica thus
        pays one round trip for many releases, and no task per release. Stopping the
        dispatcher flushes them. If the replica dies first, the leases expire in Redis.
        """
        if self._leases.pop(lease.lease_id, None) is None:
            return
        self._ending.append(ending or Ending(lease.node_id, lease.lease_id))
        if not self._flushing:
            self._flushing = True
            task = asyncio.get_running_loop().create_task(self._flush_releases())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush_releases(self) -> None:
        try:
            # No yield first: a task's first step runs after the rest of the loop turn that
            # made it, so the releases of that turn are already in; one more turn of waiting
            # would only cost a turn.
            while self._ending:
                batch, self._ending = self._ending, []
                try:
                    await self._scripts.release_many(batch, self._limits.response_ttl_ms)
                except RouterError as exc:
                    log.warning(
                        "could not release %d leases: %s (they will expire)", len(batch), exc
                    )
        finally:
            # No await since the last look at ``_ending``: a release ended from now on
            # starts the next flush.
            self._flushing = False

    # --- keep-alive -----------------------------------------------------------------------

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewer")

    async def stop(self) -> None:
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def renew_once(self) -> None:
        leases = [(node, lease) for lease, node in self._leases.items()]
        tickets = self._events.tickets()
        if leases or tickets:
            await self._scripts.renew(
                lease_ttl_ms=self._limits.lease_ttl_ms,
                ticket_ttl_ms=self._limits.ticket_ttl_ms,
                leases=leases,
                tickets=tickets,
            )

    async def _renew_forever(self) -> None:
        # A third of the shorter TTL: two renewals can fail before anything expires.
        period = min(self._limits.lease_ttl_ms, self._limits.ticket_ttl_ms) / 3000
        while True:
            await asyncio.sleep(period)
            try:
                await self.renew_once()
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)


_NOT_QUEUED = 1 << 62


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
