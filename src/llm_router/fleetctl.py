"""``llm-router fleet``: the operator's view of a fleet, read straight from its Redis.

    llm-router fleet [--redis-url URL] [--key-prefix P] [--json]
        nodes | models | queues | leases | drain NODE | undrain NODE | forget NODE

No router needs to be running: the command reads and writes the same keys (through the
same registry and scripts) the replicas use, so what it shows is what routing sees.
``NODE`` is a node id, a unique id prefix, a machine name, or ``machine_name:runtime_port``.
Tables by default; ``--json`` prints one JSON document for scripts.

Exit status: 0 done, 1 the node was not found or Redis could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from llm_router.errors import StateStoreUnavailable
from llm_router.observability.tenant_view import by_band_and_tenant, parse_queue_info
from llm_router.settings import RouterSettings
from llm_router.state.connect import StoreUrlError, open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import STORE_DOWN_ERRORS, FleetScripts

_ACTIONS_ON_NODE = ("drain", "undrain", "forget")
# Shortest id prefix accepted for NODE: shorter ones match too much by accident.
_MIN_ID_PREFIX = 4
_UNREACHABLE: tuple[type[BaseException], ...] = (
    StateStoreUnavailable,
    RedisError,
    *STORE_DOWN_ERRORS,
)


class NodeLookupError(LookupError):
    """NODE matched no node, or more than one; the message says which."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class FleetState:
    """Reads (and the few writes) behind each ``fleet`` action."""

    redis: Any
    keys: Keys
    registry: NodeRegistry

    async def now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.registry.list_nodes()

    async def known_models(self) -> list[tuple[str, float]]:
        raw = await self.redis.zrange(self.keys.models_known, 0, -1, withscores=True)
        return sorted((_text(m), float(score)) for m, score in raw)

    async def models(self) -> list[dict[str, Any]]:
        """Every model the fleet remembers, with who can serve it now and who waits for it."""
        nodes = await self.nodes()
        known = await self.known_models()
        # model:<m>:nodes keeps lapsed nodes until a heartbeat sweeps them: count the live.
        live = {n["id"] for n in nodes if n["status"] != "offline"}
        pipe = self.redis.pipeline(transaction=False)
        for model, _ in known:
            pipe.zrange(self.keys.model_nodes(model), 0, -1)
            pipe.zcard(self.keys.model_load(model))
            pipe.zcard(self.keys.queue(model))
        counts = await pipe.execute() if known else []
        rows = []
        for i, (model, last_seen_ms) in enumerate(known):
            members, routable, queued = counts[3 * i : 3 * i + 3]
            capable = sum(1 for m in members if _text(m) in live)
            serving = [n for n in nodes if model in n["executable_models"]]
            online = [n for n in serving if n["status"] == "online"]
            rows.append(
                {
                    "id": model,
                    "live_nodes": int(capable),
                    "online_nodes": len(online),
                    "routable_nodes": int(routable),
                    "backends": sorted({str(n.get("gpu_backend", "")) for n in online}),
                    "queued": int(queued),
                    "last_advertised": last_seen_ms / 1000.0,
                }
            )
        return rows

    async def queues(self) -> list[dict[str, Any]]:
        """Per known model: queue length, how long the first in line has waited, tickets
        whose waiter died, and the waiters per tenant and priority band."""
        known = [m for m, _ in await self.known_models()]
        now = await self.now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for model in known:
            pipe.zcard(self.keys.queue(model))
            pipe.zrange(self.keys.queue(model), 0, 0)
            pipe.zcount(self.keys.queue_alive(model), now + 1, "+inf")
            pipe.hgetall(self.keys.queue_info(model))
        raw = await pipe.execute() if known else []
        rows = []
        for i, model in enumerate(known):
            length, head, alive, info = raw[4 * i : 4 * i + 4]
            waiting = parse_queue_info(info)
            # Arrivals are µs on the Redis clock; a ticket not renewed past its deadline
            # (or with no deadline at all) belongs to a waiter that is gone.
            head_info = waiting.get(_text(head[0])) if head else None
            head_age_s = (now * 1000 - head_info[2]) / 1e6 if head_info else None
            rows.append(
                {
                    "model": model,
                    "length": int(length),
                    "head_age_s": head_age_s,
                    "dead_tickets": max(0, int(length) - int(alive)),
                    "tenants": by_band_and_tenant(waiting.values(), now),
                }
            )
        return rows

    async def leases(self) -> list[dict[str, Any]]:
        """Per node: leases held, its limit, the earliest deadline, expired leases not pruned."""
        nodes = await self.nodes()
        now = await self.now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for node in nodes:
            key = self.keys.leases(node["id"])
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zcount(key, "-inf", now)
        raw = await pipe.execute() if nodes else []
        rows = []
        for i, node in enumerate(nodes):
            total, earliest, expired = raw[3 * i : 3 * i + 3]
            deadline_ms = float(earliest[0][1]) if earliest else None
            rows.append(
                {
                    "node_id": node["id"],
                    "machine_name": node.get("machine_name", ""),
                    "status": node["status"],
                    "in_flight": int(node["in_flight"]),
                    "max_concurrency": int(node.get("max_concurrency", 0)),
                    "leases": int(total),
                    "earliest_deadline_in_s": None
                    if deadline_ms is None
                    else (deadline_ms - now) / 1000.0,
                    "expired_unpruned": int(expired),
                }
            )
        return rows

    async def resolve(self, name: str) -> dict[str, Any]:
        """The node record NODE names: id, unique id prefix, machine name, machine:port."""
        nodes = await self.nodes()
        by_id = {n["id"]: n for n in nodes}
        if name in by_id:
            return by_id[name]
        indexed = await self.redis.hget(self.keys.nodes_index, name)
        if indexed is not None and _text(indexed) in by_id:
            return by_id[_text(indexed)]
        matches = [n for n in nodes if n.get("machine_name") == name]
        if not matches and len(name) >= _MIN_ID_PREFIX:
            matches = [n for n in nodes if str(n["id"]).startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NodeLookupError(f"no node matches {name!r} (try 'llm-router fleet nodes')")
        choices = ", ".join(
            f"{n['id']} ({n.get('machine_name')}:{n.get('runtime_port')})" for n in matches
        )
        raise NodeLookupError(
            f"{name!r} matches {len(matches)} nodes: {choices}; name one by id or machine:port"
        )


# --- rendering -----------------------------------------------------------------------------


def _ago(then_s: float | None, now_s: float) -> str:
    if not then_s:
        return "-"
    return f"{max(0.0, now_s - then_s):.1f}s ago"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _nodes_table(rows: list[dict[str, Any]], now_s: float) -> Table:
    table = _table(
        "ID", "MACHINE", "ADDRESS", "BACKEND", "STATUS", "RUNTIME", "LOAD", "SEEN", "MODELS"
    )
    for node in rows:
        excluded = node.get("excluded_models") or {}
        loaded = set(node.get("loaded_models") or [])
        models = ", ".join(
            m + (" (excluded)" if m in excluded else "") + (" (loaded)" if m in loaded else "")
            for m in node["executable_models"]
        )
        source = node.get("max_concurrency_source")
        table.add_row(
            str(node["id"]),
            str(node.get("machine_name", "")),
            f"{node.get('ip_address', '')}:{node.get('node_api_port', '')}",
            str(node.get("gpu_backend", "")),
            str(node["status"]),
            _runtime_text(node),
            f"{node['in_flight']}/{node.get('max_concurrency', '?')}"
            + (f" ({source})" if source else ""),
            _ago(node.get("last_seen"), now_s),
            models or "-",
        )
    return table


def _runtime_text(node: dict[str, Any]) -> str:
    """``ready llamacpp b1234, 1 running 0 waiting``: status, kind, version, its own load."""
    head = " ".join(
        str(part)
        for part in (
            node.get("runtime_status") or "-",
            node.get("runtime_kind"),
            node.get("runtime_version"),
        )
        if part
    )
    load = node.get("runtime_load") or {}
    figures = [f"{load[k]} {k}" for k in ("running", "waiting") if k in load]
    if "kv_cache_usage" in load:
        figures.append(f"kv {round(100 * float(load['kv_cache_usage']))}%")
    return head + (", " + " ".join(figures) if figures else "")


def _models_table(rows: list[dict[str, Any]]) -> Table:
    table = _table("MODEL", "LIVE", "ONLINE", "ROUTABLE", "BACKENDS", "QUEUED")
    for row in rows:
        table.add_row(
            row["id"],
            str(row["live_nodes"]),
            str(row["online_nodes"]),
            str(row["routable_nodes"]),
            ", ".join(row["backends"]) or "-",
            str(row["queued"]),
        )
    return table


def _queues_table(rows: list[dict[str, Any]]) -> Table:
    table = _table("MODEL", "LENGTH", "HEAD AGE", "DEAD TICKETS", "BY BAND/TENANT")
    for row in rows:
        tenants = ", ".join(
            f"{t['band']}/{t['tenant']}: {t['waiting']} ({_seconds(t['oldest_wait_s'])})"
            for t in row["tenants"]
        )
        table.add_row(
            row["model"],
            str(row["length"]),
            _seconds(row["head_age_s"]),
            str(row["dead_tickets"]),
            tenants or "-",
        )
    return table


def _leases_table(rows: list[dict[str, Any]]) -> Table:
    table = _table("NODE", "MACHINE", "STATUS", "IN-FLIGHT", "MAX", "EARLIEST DEADLINE", "EXPIRED")
    for row in rows:
        table.add_row(
            row["node_id"],
            row["machine_name"],
            row["status"],
            str(row["in_flight"]),
            str(row["max_concurrency"]),
            _seconds(row["earliest_deadline_in_s"]),
            str(row["expired_unpruned"]),
        )
    return table


def _console() -> Console:
    # Piped output (scripts, tests, `| less`) gets wide lines rather than 80-column folds.
    probe = Console(file=sys.stdout)
    return Console(file=sys.stdout, width=None if probe.is_terminal else 200)


def _emit(args: argparse.Namespace, data: Any, table: Table | None = None) -> None:
    if args.json:
        print(json.dumps(data, indent=None, sort_keys=True))
    elif table is not None:
        _console().print(table)


# --- the command ---------------------------------------------------------------------------


def _is_identity(name: str) -> bool:
    machine, sep, port = name.rpartition(":")
    return bool(sep and machine and port.isdigit())


async def _identity_drain(state: FleetState, args: argparse.Namespace) -> int:
    """Drain or undrain ``machine:port`` while no record of it exists (deleted, or not yet
    registered): the drain waits for the identity's next registration."""
    draining = args.fleet_action == "drain"
    if not await state.registry.drain_identity(args.node, draining=draining):
        sys.stderr.write(f"llm-router fleet: no node or drain matches {args.node!r}\n")
        return 1
    result = {"action": args.fleet_action, "identity": args.node, "status": "no record"}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(f"{args.fleet_action}: {args.node} (no record now; kept for its next registration)")
    return 0


async def _node_action(state: FleetState, args: argparse.Namespace) -> int:
    try:
        node = await state.resolve(args.node)
    except NodeLookupError as exc:
        if args.fleet_action != "forget" and _is_identity(args.node):
            return await _identity_drain(state, args)
        sys.stderr.write(f"llm-router fleet: {exc}\n")
        return 1
    node_id = str(node["id"])
    if args.fleet_action == "forget":
        done = await state.registry.deregister(node_id) == "ok"
    else:
        done = await state.registry.drain(node_id, draining=args.fleet_action == "drain")
    if not done:
        sys.stderr.write(f"llm-router fleet: node {node_id} disappeared before the change\n")
        return 1
    after = await state.registry.get_node(node_id)
    result = {
        "action": args.fleet_action,
        "node_id": node_id,
        "machine_name": node.get("machine_name"),
        "status": after["status"] if after else "forgotten",
        "in_flight": after["in_flight"] if after else 0,
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(
            f"{args.fleet_action}: {node_id} ({result['machine_name']}) -> {result['status']}, "
            f"{result['in_flight']} in flight"
        )
        if args.fleet_action == "forget":
            sys.stderr.write(
                "note: a running agent registers again at its next heartbeat; drain it "
                "(the drain outlives the record) or revoke its key to keep it out\n"
            )
    return 0


async def _run(args: argparse.Namespace, settings: RouterSettings) -> int:
    store = open_store(settings.redis_url, timeout_s=settings.redis_socket_timeout_s)
    try:
        keys = Keys(settings.key_prefix)
        registry = NodeRegistry(
            store.redis,
            keys,
            FleetScripts(store.redis, keys),
            RegistryConfig(
                alive_ttl_ms=int(settings.node_timeout_s * 1000),
                forget_ms=int(settings.node_forget_s * 1000),
                default_max_concurrency=settings.default_max_concurrency,
            ),
        )
        state = FleetState(store.redis, keys, registry)
        action = args.fleet_action
        if action in _ACTIONS_ON_NODE:
            return await _node_action(state, args)
        if action == "nodes":
            rows = await state.nodes()
            now_s = await state.now_ms() / 1000.0
            _emit(args, rows, _nodes_table(rows, now_s))
        elif action == "models":
            model_rows = await state.models()
            _emit(args, model_rows, _models_table(model_rows))
        elif action == "queues":
            queue_rows = await state.queues()
            _emit(args, queue_rows, _queues_table(queue_rows))
        else:
            lease_rows = await state.leases()
            _emit(args, lease_rows, _leases_table(lease_rows))
        return 0
    finally:
        await store.close()


def add_fleet_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "fleet", help="inspect the fleet in Redis: nodes, models, queues, leases; drain, forget"
    )
    parser.add_argument("--redis-url", default=None, help="[env LLM_ROUTER_REDIS_URL]")
    parser.add_argument("--key-prefix", default=None, help="[env LLM_ROUTER_KEY_PREFIX]")
    parser.add_argument("--json", action="store_true", default=False, help="print JSON")
    actions = parser.add_subparsers(dest="fleet_action", required=True)
    # --json is accepted after the action too; SUPPRESS keeps the parent's value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    actions.add_parser("nodes", parents=[common], help="every node: status, load, models")
    actions.add_parser("models", parents=[common], help="known models: who serves them, queues")
    actions.add_parser("queues", parents=[common], help="per model: length, head age, dead tickets")
    actions.add_parser(
        "leases", parents=[common], help="per node: in-flight, limit, deadlines, stuck leases"
    )
    helps = {
        "drain": "stop routing new requests to NODE (in-flight ones finish); kept for "
        "machine:port across re-registrations until undrain",
        "undrain": "route to NODE again",
        "forget": "remove NODE now (a running agent registers again)",
    }
    for action in _ACTIONS_ON_NODE:
        node_parser = actions.add_parser(action, parents=[common], help=helps[action])
        node_parser.add_argument("node", help="node id, id prefix, machine name or machine:port")
    parser.set_defaults(func=cmd_fleet)


def _settings(args: argparse.Namespace) -> RouterSettings:
    from llm_router.cli import store_settings

    return store_settings(args.redis_url, args.key_prefix)


def cmd_fleet(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ValueError as exc:
        sys.stderr.write(f"llm-router fleet: invalid configuration: {exc}\n")
        return 2
    if settings.embedded:
        sys.stderr.write(
            "llm-router fleet: the fleet lives in Redis; set --redis-url or LLM_ROUTER_REDIS_URL "
            "(an embedded-store router keeps its state inside its own process)\n"
        )
        return 2
    try:
        return asyncio.run(_run(args, settings))
    except StoreUrlError as exc:
        sys.stderr.write(f"llm-router fleet: {exc}\n")
        return 2
    except _UNREACHABLE as exc:
        sys.stderr.write(f"llm-router fleet: cannot reach Redis: {exc}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``fleet`` alone, for embedding in other tools and for tests."""
    parser = argparse.ArgumentParser(prog="llm-router")
    add_fleet_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fleet", *(argv or [])])
    result: int = args.func(args)
    return result
