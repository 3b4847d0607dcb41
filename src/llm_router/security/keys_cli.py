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

from llm_router.auth import Scope
from llm_router.security.managed_keys import KeyListing, KeyNotFound, ManagedKeyStore
from llm_router.settings import RouterSettings
from llm_router.state.connect import open_store
from llm_router.state.keys import Keys


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
    return f"{item.key_id:<14}{item.scope!s:<7}{created:<22}{limit:<8}{item.name}"


def _as_json(item: KeyListing) -> dict[str, Any]:
    data = asdict(item)
    data["scope"] = str(item.scope)
    return data


async def _run(args: argparse.Namespace, settings: RouterSettings) -> int:
    store = open_store(settings.redis_url, timeout_s=settings.redis_socket_timeout_s)
    try:
        managed = ManagedKeyStore(store.redis, Keys(settings.key_prefix))
        if args.keys_action == "create":
            key, item = await managed.create(
                Scope(args.scope), name=args.name, rate_limit_per_minute=args.rate_limit_per_minute
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
                print(f"{'ID':<14}{'SCOPE':<7}{'CREATED':<22}{'RPM':<8}NAME")
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
