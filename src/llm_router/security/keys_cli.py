"""``llm-router keys create|list|revoke``: manage the API keys kept in the fleet's Redis.

The commands talk to Redis directly (``--redis-url``, ``--key-prefix`` or their
``LLM_ROUTER_*`` variables), so they work before any router runs: an operator can create
the first admin and node keys, then start the fleet without keys in its environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from llm_router.auth import ManagedKey, Scope
from llm_router.security.managed_keys import KeyListing, KeyNotFound, ManagedKeyStore
from llm_router.settings import RouterSettings
from llm_router.state.connect import open_store
from llm_router.state.keys import Keys
from llm_router.tenancy import DEFAULT_PRIORITY, MAX_PRIORITY, MAX_WEIGHT


def add_keys_parser(sub: Any) -> None:
    parser = sub.add_parser("keys", help="create, list and revoke API keys kept in Redis")
    parser.add_argument("--redis-url", default=None, help="[env LLM_ROUTER_REDIS_URL]")
    parser.add_argument("--key-prefix", default=None, help="[env LLM_ROUTER_KEY_PREFIX]")
    actions = parser.add_subparsers(dest="keys_action", required=True)

    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--scope", required=True, choices=[s.value for s in Scope])
    create.add_argument("--name", default="", help="a label for operators (who holds the key)")
    create.add_argument(
        "--rate-limit-per-minute", type=int, default=None, help="this key's own request limit"
    )
    create.add_argument(
        "--tenant", default="", help="the tenant its requests queue under (default: the key itself)"
    )
    create.add_argument(
        "--priority", type=int, default=DEFAULT_PRIORITY,
        help=f"queue band 0-{MAX_PRIORITY}, higher served first (default {DEFAULT_PRIORITY})",
    )  # fmt: skip
    create.add_argument(
        "--weight", type=int, default=1,
        help=f"the tenant's share of freed slots within its band, 1-{MAX_WEIGHT} (default 1)",
    )  # fmt: skip
    create.add_argument(
        "--max-in-flight", type=int, default=0,
        help="at most this many of the key's requests running across the fleet (0: no limit)",
    )  # fmt: skip
    create.add_argument(
        "--refuse-over-limit", action="store_true",
        help="over --max-in-flight, answer 429 instead of waiting",
    )  # fmt: skip
    create.add_argument("--json", action="store_true", help="print JSON")

    listing = actions.add_parser("list", help="list keys (ids, scopes, names; never the keys)")
    listing.add_argument("--json", action="store_true", help="print JSON")

    revoke = actions.add_parser("revoke", help="revoke a key by its id (from 'keys list')")
    revoke.add_argument("key_id")
    parser.set_defaults(func=cmd_keys)


def _settings(args: argparse.Namespace) -> RouterSettings:
    from llm_router.cli import store_settings

    return store_settings(args.redis_url, args.key_prefix)


def _row(item: KeyListing) -> str:
    created = datetime.fromtimestamp(item.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    limit = str(item.rate_limit_per_minute) if item.rate_limit_per_minute else "-"
    tenant = item.tenant or "(own)"
    flight = str(item.max_in_flight) if item.max_in_flight else "-"
    if item.max_in_flight and item.refuse_over_limit:
        flight += "!"
    return (
        f"{item.key_id:<14}{item.scope!s:<7}{created:<22}{limit:<8}{tenant:<16}"
        f"{item.priority:<5}{item.weight:<7}{flight:<8}{item.name}"
    )


def _as_json(item: KeyListing) -> dict[str, Any]:
    data = asdict(item)
    data["scope"] = str(item.scope)
    return data


async def _run(args: argparse.Namespace, settings: RouterSettings) -> int:
    store = open_store(settings.redis_url, timeout_s=settings.redis_socket_timeout_s)
    try:
        managed = ManagedKeyStore(store.redis, Keys(settings.key_prefix))
        if args.keys_action == "create":
            queueing = ManagedKey(
                Scope(args.scope), args.name, 0,
                tenant=args.tenant, priority=args.priority, weight=args.weight,
                max_in_flight=args.max_in_flight, refuse_over_limit=args.refuse_over_limit,
            )  # fmt: skip
            key, item = await managed.create(
                Scope(args.scope),
                name=args.name,
                rate_limit_per_minute=args.rate_limit_per_minute,
                queueing=queueing,
            )
            if args.json:
                print(json.dumps({"key": key, **_as_json(item)}))
            else:
                print(key)
                sys.stderr.write(
                    f"created key {item.key_id} (scope {item.scope}); it is shown only once. "
                    "Routers accept it within their key refresh period.\n"
                )
            return 0
        if args.keys_action == "list":
            items = await managed.list()
            if args.json:
                print(json.dumps([_as_json(i) for i in items]))
            else:
                print(
                    f"{'ID':<14}{'SCOPE':<7}{'CREATED':<22}{'RPM':<8}{'TENANT':<16}"
                    f"{'PRIO':<5}{'WEIGHT':<7}{'FLIGHT':<8}NAME"
                )
                for item in items:
                    print(_row(item))
            return 0
        try:
            item = await managed.revoke(args.key_id)
        except KeyNotFound as exc:
            sys.stderr.write(f"llm-router keys: {exc}\n")
            return 1
        print(f"revoked {item.key_id} (scope {item.scope}, name {item.name or '-'})")
        return 0
    finally:
        await store.close()


def cmd_keys(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.embedded:
        sys.stderr.write(
            "llm-router keys: managed keys live in the fleet's Redis; set --redis-url or "
            "LLM_ROUTER_REDIS_URL (the embedded store has no keys to manage)\n"
        )
        return 2
    try:
        return asyncio.run(_run(args, settings))
    except ValueError as exc:
        sys.stderr.write(f"llm-router keys: {exc}\n")
        return 2
    except (OSError, RedisError) as exc:
        sys.stderr.write(f"llm-router keys: cannot reach Redis: {exc}\n")
        return 1
