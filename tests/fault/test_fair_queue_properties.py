"""Property-based tests of the queue's fair order over long runs, on a real redis-server.

Hypothesis draws a few tenants (band, weight) and a history of arrivals and freed slots on
a one-slot node. The test keeps its own model of the queue (each ticket's place tag, as the
script returned it) and checks after every freed slot: exactly one waiter takes it, the
first in fair order (smallest tag, ties by ticket as Redis orders them), and no ticket is
ever served twice. Over the run: between two tenants of one band that both stay
backlogged, service tracks the weights within the start-time fair queuing bound
``|n_i / w_i - n_j / w_j| <= 1 / w_i + 1 / w_j``; nobody waits forever within a band
(every ticket is served once arrivals stop); a higher band always goes first.

``LLM_ROUTER_PROPERTY_EXAMPLES`` (default 12) sets how many random histories are tried.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from dataclasses import dataclass, field
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from llm_router.protocol import RegisterRequest
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts, Granted, Queued
from llm_router.tenancy import Tenancy

MODEL = "fair-model"
_serial = itertools.count()

tenants_st = st.lists(st.tuples(st.sampled_from([4, 5]), st.integers(1, 4)), min_size=2, max_size=4)
# An event is a tenant index (that tenant sends a request) or None (a slot frees up).
events_st = st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=10, max_size=120)


@dataclass
class Run:
    scripts: FleetScripts
    tenants: list[Tenancy]
    lease: tuple[str, str] = ("", "")
    waiting: dict[str, tuple[int, int]] = field(default_factory=dict)  # ticket → (tag, tenant)
    served: list[str] = field(default_factory=list)
    owner: dict[str, int] = field(default_factory=dict)

    async def ask(self, ticket: str, who: int) -> Granted | Queued:
        result = await self.scripts.acquire(
            model=MODEL,
            lease_id=uuid.uuid4().hex,
            lease_ttl_ms=600_000,
            ticket=ticket,
            queue_max=10_000,
            ticket_ttl_ms=600_000,
            forget_ms=600_000,
            tenancy=self.tenants[who],
        )
        assert isinstance(result, Granted | Queued), result
        return result

    async def arrive(self, who: int) -> None:
        ticket = f"{next(_serial):08d}{uuid.uuid4().hex[:8]}"
        self.owner[ticket] = who
        result = await self.ask(ticket, who)
        assert isinstance(result, Queued), "the slot is held: an arrival must queue"
        self.waiting[ticket] = (result.order, who)

    async def free_slot(self) -> None:
        node, lease = self.lease
        await self.scripts.release(node_id=node, lease_id=lease)
        if not self.waiting:
            await self.take(uuid.uuid4().hex, 0)  # nobody queued: a fresh request takes it
            return
        head = min(self.waiting, key=lambda t: (self.waiting[t][0], t))
        for ticket in [t for t in self.waiting if t != head][:3]:
            assert isinstance(await self.ask(ticket, self.waiting[ticket][1]), Queued), (
                "a waiter behind the head took the slot"
            )
        await self.take(head, self.waiting.pop(head)[1])

    async def take(self, ticket: str, who: int) -> None:
        result = await self.ask(ticket, who)
        assert isinstance(result, Granted), (ticket, result)
        assert ticket not in self.served, "a ticket was served twice"
        if ticket in self.owner:
            self.served.append(ticket)
        self.lease = (result.node_id, result.lease_id)


def check_weighted_share(run: Run, history: list[tuple[str, str]]) -> None:
    """The SFQ bound between every pair of same-band tenants over each interval in which
    both stayed backlogged (history: ("arrive"|"serve", ticket) in order)."""
    tenants = run.tenants
    for i, j in itertools.combinations(range(len(tenants)), 2):
        if tenants[i].priority != tenants[j].priority:
            continue
        wi, wj = tenants[i].weight, tenants[j].weight
        bound = Fraction(1, wi) + Fraction(1, wj)
        backlog = {i: 0, j: 0}
        n = {i: 0, j: 0}
        for kind, ticket in history:
            who = run.owner[ticket]
            if who not in backlog:
                continue
            both_before = backlog[i] > 0 and backlog[j] > 0
            if kind == "arrive":
                backlog[who] += 1
            else:
                backlog[who] -= 1
                if both_before:
                    n[who] += 1
                    gap = abs(Fraction(n[i], wi) - Fraction(n[j], wj))
                    assert gap <= bound, (tenants[i], tenants[j], n, history)
            if not (backlog[i] > 0 and backlog[j] > 0):
                n = {i: 0, j: 0}


@settings(
    max_examples=int(os.environ.get("LLM_ROUTER_PROPERTY_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tenant_specs=tenants_st, events=events_st)
def test_fair_order_over_long_runs(
    redis_url: str, tenant_specs: list[tuple[int, int]], events: list[int | None]
) -> None:
    tenants = [Tenancy(f"t{k}", band, weight) for k, (band, weight) in enumerate(tenant_specs)]
    asyncio.run(_play(redis_url, tenants, events))


async def _play(redis_url: str, tenants: list[Tenancy], events: list[int | None]) -> None:
    redis = Redis.from_url(redis_url)
    keys = Keys(f"fair{uuid.uuid4().hex[:10]}")
    scripts = FleetScripts(redis, keys)
    try:
        registry = NodeRegistry(redis, keys, scripts, RegistryConfig(600_000, 600_000))
        request = RegisterRequest.model_validate(
            {"machine_name": "n0", "ip_address": "127.0.0.1", "runtime_port": 9000,
             "max_concurrency": 1}
        )  # fmt: skip
        await registry.register(request, executable_models=[MODEL], gpu_backend="cuda")
        run = Run(scripts, tenants)
        await run.take(uuid.uuid4().hex, 0)  # the slot is held from the start
        history: list[tuple[str, str]] = []
        for event in events:
            if event is None:
                before = set(run.waiting)
                await run.free_slot()
                history += [("serve", t) for t in before - set(run.waiting)]
            else:
                await run.arrive(event % len(tenants))
                history.append(("arrive", max(run.owner)))
            bands = [tenants[w].priority for _, w in run.waiting.values()]
            if run.served and bands and history[-1][0] == "serve":
                # A higher band goes first: nobody still waiting outranks the one served.
                assert tenants[run.owner[run.served[-1]]].priority >= max(bands)
        while run.waiting:  # arrivals stop: everyone left is served, none starves
            before = set(run.waiting)
            await run.free_slot()
            history += [("serve", t) for t in before - set(run.waiting)]
        assert sorted(run.served) == sorted(run.owner)
        check_weighted_share(run, history)
    finally:
        await redis.aclose()
