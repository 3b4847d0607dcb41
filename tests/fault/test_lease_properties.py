"""Property-based tests of the lease and queue scripts on a real redis-server.

Hypothesis drives random interleavings of two router replicas taking, releasing and
waiting for slots on a few nodes, for tenants of different priority bands and weights, and
of replicas dying (they stop renewing; their leases and tickets must expire on their own).
After every step: no node holds more live leases than its ``max_concurrency``; a waiter is
served only when it is first in the fair order among the live waiters (smallest place tag;
Redis breaks ties by ticket); a fresh arrival overtakes no waiter of a higher band; no
ticket is served twice; a key with ``max_in_flight`` never has more live leases than that
across the replicas (dead ones included until their leases expire); and at the end, with
everyone gone, nothing is left held or queued.

``LLM_ROUTER_PROPERTY_EXAMPLES`` (default 12) sets how many random histories are tried.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from llm_router.protocol import HeartbeatRequest, RegisterRequest
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts, Granted, KeyWait, Queued
from llm_router.tenancy import Tenancy

MODEL = "prop-model"
TTL_MS = 300  # leases and tickets of a replica that stops renewing die this fast
_serial = itertools.count()
#: Which of the held leases or waiting tickets a rule acts on, taken modulo their number.
#: A draw whose bounds never depend on the state: when a stalled step lets leases expire,
#: the lists shrink, and a ``sampled_from`` over them would change shape between Hypothesis'
#: runs of one history (``FlakyStrategyDefinition``).
PICK = st.integers(0, 1 << 16)
LIMITED = Tenancy("e", 5, 1, key_id="key-e", max_in_flight=2)
TENANTS = [
    Tenancy("a", 5, 1),
    Tenancy("b", 5, 3),
    Tenancy("c", 7, 1),
    Tenancy("d", 2, 2),
    LIMITED,
    LIMITED,
]


@dataclass
class Replica:
    name: str
    leases: dict[str, str] = field(default_factory=dict)  # lease id → node id
    waiting: dict[str, tuple[int, str]] = field(default_factory=dict)  # ticket → (tag, ticket)
    tenancy: dict[str, Tenancy] = field(default_factory=dict)  # ticket → who asked


class LeaseMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(self.redis_url)
        self.keys = Keys(f"prop{uuid.uuid4().hex[:10]}")
        self.scripts = FleetScripts(self.redis, self.keys)
        self.capacity: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self.replicas = [Replica(f"r{next(_serial)}") for _ in range(2)]
        self.dead: list[Replica] = []
        self.dead_pending = False
        self.served: set[str] = set()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @initialize(capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3))
    def nodes(self, capacities: list[int]) -> None:
        config = RegistryConfig(alive_ttl_ms=600_000, forget_ms=600_000)
        registry = NodeRegistry(self.redis, self.keys, self.scripts, config)
        for i, capacity in enumerate(capacities):
            request = RegisterRequest.model_validate(
                {"machine_name": f"n{i}", "ip_address": "127.0.0.1", "runtime_port": 9000 + i,
                 "max_concurrency": capacity}
            )  # fmt: skip
            registration = self.run(
                registry.register(request, executable_models=[MODEL], gpu_backend="cuda")
            )
            self.capacity[registration.node_id] = capacity
            self.tokens[registration.node_id] = registration.token
        self.registry = registry

    # --- the replicas' actions ---------------------------------------------------------------

    def renew_all(self) -> None:
        """Every live replica renews what it holds, as its keep-alive task would.

        A loaded machine can stall a step past the TTL; what expired then expired for real
        (the scripts were right to let it go), so the model forgets it too.
        """
        now_ms = self.now_ms()
        for replica in self.replicas:
            self.run(
                self.scripts.renew(
                    lease_ttl_ms=TTL_MS,
                    ticket_ttl_ms=TTL_MS,
                    leases=[(node, lease) for lease, node in replica.leases.items()],
                    tickets=[(MODEL, ticket) for ticket in replica.waiting],
                )
            )
            for lease, node in list(replica.leases.items()):
                score = self.run(self.redis.zscore(self.keys.leases(node), lease))
                if score is None or score <= now_ms:
                    del replica.leases[lease]
            for ticket in list(replica.waiting):
                score = self.run(self.redis.zscore(self.keys.queue_alive(MODEL), ticket))
                if score is None or score <= now_ms:
                    del replica.waiting[ticket]

    def now_ms(self) -> int:
        seconds, micros = self.run(self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    def acquire(self, ticket: str, tenancy: Tenancy = TENANTS[0]) -> Granted | Queued | KeyWait:
        result = self.run(
            self.scripts.acquire(
                model=MODEL,
                lease_id=uuid.uuid4().hex,
                lease_ttl_ms=TTL_MS,
                ticket=ticket,
                queue_max=1000,
                ticket_ttl_ms=TTL_MS,
                forget_ms=600_000,
                tenancy=tenancy,
            )
        )
        assert isinstance(result, Granted | Queued | KeyWait), result
        if isinstance(result, KeyWait):
            assert tenancy.max_in_flight and result.in_flight >= tenancy.max_in_flight
        if isinstance(result, Granted):
            assert ticket not in self.served, "a ticket was served twice"
            self.served.add(ticket)
        return result

    def first_live_waiter(self) -> tuple[int, str] | None:
        places = [p for r in self.replicas for p in r.waiting.values()]
        return min(places) if places else None

    def best_waiting_band(self) -> int:
        bands = [r.tenancy[t].priority for r in self.replicas for t in r.waiting]
        return max(bands, default=-1)

    @rule(which=st.integers(0, 1), who=st.sampled_from(TENANTS))
    def arrive(self, which: int, who: Tenancy) -> None:
        self.renew_all()
        replica = self.replicas[which]
        best_band = self.best_waiting_band()
        ticket = uuid.uuid4().hex
        result = self.acquire(ticket, who)
        if isinstance(result, Granted):
            assert who.priority >= best_band, "a fresh arrival overtook a higher band"
            replica.leases[result.lease_id] = result.node_id
        elif isinstance(result, Queued):
            replica.waiting[ticket] = (result.order, ticket)
            replica.tenancy[ticket] = who

    def pick_waiting(self, pick: int) -> tuple[Replica, str] | None:
        """The ``pick``-th of the live replicas' tickets, after they renewed, or None when
        a stalled step let every one expire."""
        self.renew_all()
        tickets = [(r, t) for r in self.replicas for t in r.waiting]
        return tickets[pick % len(tickets)] if tickets else None

    @precondition(lambda self: any(r.waiting for r in self.replicas))
    @rule(pick=PICK)
    def retry(self, pick: int) -> None:
        picked = self.pick_waiting(pick)
        if picked is None:
            return
        replica, ticket = picked
        place = replica.waiting[ticket]
        first = self.first_live_waiter()
        result = self.acquire(ticket, replica.tenancy[ticket])
        if isinstance(result, Granted):
            assert place == first, "a waiter was served before one ahead of it in fair order"
            del replica.waiting[ticket]
            replica.leases[result.lease_id] = result.node_id
        elif isinstance(result, KeyWait):
            del replica.waiting[ticket]  # it stepped out of the queue to wait on its key

    @precondition(lambda self: any(r.leases for r in self.replicas))
    @rule(pick=PICK)
    def release(self, pick: int) -> None:
        self.renew_all()
        leases = [(r, lease) for r in self.replicas for lease in r.leases]
        if not leases:
            return
        replica, lease = leases[pick % len(leases)]
        node = replica.leases.pop(lease)
        self.run(self.scripts.release(node_id=node, lease_id=lease))

    @precondition(lambda self: any(r.waiting for r in self.replicas))
    @rule(pick=PICK)
    def give_up(self, pick: int) -> None:
        picked = self.pick_waiting(pick)
        if picked is None:
            return
        replica, ticket = picked
        del replica.waiting[ticket]
        assert self.run(self.scripts.leave_queue(model=MODEL, ticket=ticket))

    @precondition(lambda self: len(self.dead) < 3)
    @rule(which=st.integers(0, 1))
    def replica_dies(self, which: int) -> None:
        """The replica vanishes without releasing anything; a fresh one takes its place."""
        self.dead.append(self.replicas[which])
        self.replicas[which] = Replica(f"r{next(_serial)}")
        self.dead_pending = True

    @precondition(lambda self: self.dead_pending)
    @rule()
    def time_passes(self) -> None:
        """Long enough for the dead replicas' leases and tickets to expire."""
        self.sleep_renewing(TTL_MS / 1000 + 0.05)
        self.dead_pending = False

    def sleep_renewing(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.renew_all()
            time.sleep(TTL_MS / 3000)

    # --- what must always hold ---------------------------------------------------------------

    def live_leases(self, node: str) -> int:
        return int(self.run(self.redis.zcount(self.keys.leases(node), self.now_ms(), "+inf")))

    @invariant()
    def no_key_exceeds_its_limit_across_replicas(self) -> None:
        now_ms = self.now_ms()
        live = 0
        for member in self.run(self.redis.zrange(self.keys.key_flight(LIMITED.key_id), 0, -1)):
            node, lease = member.decode().split(" ")
            score = self.run(self.redis.zscore(self.keys.leases(node), lease))
            live += score is not None and score > now_ms
        assert live <= LIMITED.max_in_flight, live

    @invariant()
    def no_node_is_overfilled(self) -> None:
        for node, capacity in self.capacity.items():
            assert self.live_leases(node) <= capacity, (node, capacity)

    @invariant()
    def every_lease_we_hold_is_counted(self) -> None:
        self.renew_all()
        held: dict[str, int] = {}
        for replica in self.replicas:
            for node in replica.leases.values():
                held[node] = held.get(node, 0) + 1
        for node in self.capacity:
            assert self.live_leases(node) >= held.get(node, 0)

    def teardown(self) -> None:
        try:
            for replica in self.replicas:
                for lease, node in list(replica.leases.items()):
                    self.run(self.scripts.release(node_id=node, lease_id=lease))
                for ticket in list(replica.waiting):
                    self.run(self.scripts.leave_queue(model=MODEL, ticket=ticket))
            self.replicas = []
            if self.dead:
                time.sleep(TTL_MS / 1000 + 0.05)  # the dead replicas' leftovers expire
            if self.capacity:
                # The next request finds every slot free and nobody ahead of it.
                result = self.acquire(uuid.uuid4().hex)
                assert isinstance(result, Granted), result
                self.run(self.scripts.release(node_id=result.node_id, lease_id=result.lease_id))
            for node in self.capacity:
                assert self.live_leases(node) == 0
                # Expired members are pruned by the node's next heartbeat (or the next acquire
                # or release on that node); after one, nothing is left behind.
                beat = HeartbeatRequest(node_id=node)
                assert self.run(self.registry.heartbeat(beat, self.tokens[node])) == "ok"
                assert self.run(self.redis.zcard(self.keys.leases(node))) == 0
            assert self.run(self.redis.zcard(self.keys.queue(MODEL))) == 0
        finally:
            self.run(self.redis.aclose())
            self.loop.close()


def test_leases_and_the_queue_under_random_interleavings(redis_url: str) -> None:
    LeaseMachine.redis_url = redis_url
    run_state_machine_as_test(
        LeaseMachine,
        settings=settings(
            max_examples=int(os.environ.get("LLM_ROUTER_PROPERTY_EXAMPLES", "12")),
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
