"""``llm-router``: serve | node | sim-node | demo | fleet.

Flags are generated from the pydantic-settings classes, so every setting is both an
environment variable (``LLM_ROUTER_<NAME>``) and a flag (``--<name>``), and the two cannot
drift apart. A flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from llm_router.observability.tracing import TracingUnavailable
from llm_router.settings import RouterSettings

log = logging.getLogger("llm_router")


def _flag_type(annotation: Any) -> tuple[Callable[[str], Any], bool]:
    """The argparse converter for a settings field, and whether it is a boolean switch."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if get_origin(annotation) is not None and args else annotation
    if base is bool:
        return str, True
    if base in (int, float):
        return base, False
    return str, False


def add_settings_flags(
    parser: argparse.ArgumentParser, settings_cls: type[BaseSettings], *, skip: Sequence[str] = ()
) -> None:
    for name, field in settings_cls.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        convert, is_bool = _flag_type(field.annotation)
        env = f"LLM_ROUTER_{name.upper()}"
        help_text = f"{field.description or ''} [env {env}]".strip()
        if is_bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=name, type=convert, default=None, help=help_text)


def settings_from_args(settings_cls: type[Any], args: argparse.Namespace) -> Any:
    overrides = {
        name: getattr(args, name)
        for name in settings_cls.model_fields
        if getattr(args, name, None) is not None
    }
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"  {loc}: {err['msg']}")
        sys.stderr.write("llm-router: invalid configuration:\n" + "\n".join(lines) + "\n")
        raise SystemExit(2) from None


def store_settings(redis_url: str | None, key_prefix: str | None) -> RouterSettings:
    """Settings for a command that only talks to the store (fleet, keys): the environment,
    with ``--redis-url`` / ``--key-prefix`` on top."""
    overrides: dict[str, Any] = {
        name: value
        for name, value in (("redis_url", redis_url), ("key_prefix", key_prefix))
        if value is not None
    }
    return RouterSettings(**overrides)


def setup_logging_and_tracing(settings: Any, service_name: str) -> None:
    """Logging, then tracing (when the OTEL_* variables ask for it) for this process."""
    from llm_router.observability import tracing
    from llm_router.observability.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    try:
        if tracing.configure(service_name):
            log.info("tracing on: spans exported as the OTEL_* variables say")
    except TracingUnavailable as exc:
        log.error("llm-router: %s", exc)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from llm_router.serve import serve

    settings: RouterSettings = settings_from_args(RouterSettings, args)
    setup_logging_and_tracing(settings, "llm-router")
    return serve(settings)


def _run_agent(args: argparse.Namespace, *, simulated: bool) -> int:
    """The node agent, in front of a real runtime or of the built-in simulated one."""
    import asyncio

    from llm_router.node.catalog import CatalogError
    from llm_router.node.settings import NodeSettings, SimNodeSettings

    try:
        if simulated:
            from llm_router.sim.node import run_sim_node

            sim_settings: SimNodeSettings = settings_from_args(SimNodeSettings, args)
            setup_logging_and_tracing(sim_settings, "llm-router-node")
            return asyncio.run(run_sim_node(sim_settings))
        from llm_router.node.agent import run_node

        settings: NodeSettings = settings_from_args(NodeSettings, args)
        setup_logging_and_tracing(settings, "llm-router-node")
        return asyncio.run(run_node(settings))
    except CatalogError as exc:
        sys.stderr.write(f"llm-router {args.command}: {exc}\n")
        return 2


def cmd_node(args: argparse.Namespace) -> int:
    return _run_agent(args, simulated=False)


def cmd_sim_node(args: argparse.Namespace) -> int:
    return _run_agent(args, simulated=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from llm_router.demo import run_demo

    try:
        return run_demo(port=args.port, host=args.host)
    except KeyboardInterrupt:  # stopped while starting up; the children are already gone
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-router",
        description="OpenAI-compatible router for heterogeneous inference fleets",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve_parser = sub.add_parser("serve", help="run one router replica")
    add_settings_flags(serve_parser, RouterSettings)
    serve_parser.set_defaults(func=cmd_serve)

    from llm_router.node.settings import NodeSettings, SimNodeSettings

    node_parser = sub.add_parser("node", help="run the node agent in front of a runtime")
    add_settings_flags(node_parser, NodeSettings)
    node_parser.set_defaults(func=cmd_node)

    sim_parser = sub.add_parser("sim-node", help="run a node agent with a simulated runtime")
    add_settings_flags(sim_parser, SimNodeSettings)
    sim_parser.set_defaults(func=cmd_sim_node)

    demo_parser = sub.add_parser(
        "demo", help="router on the embedded store + three simulated nodes (metal, cuda, cpu)"
    )
    demo_parser.add_argument("--port", type=int, default=8080, help="router port")
    demo_parser.add_argument("--host", default="127.0.0.1", help="router address (loopback)")
    demo_parser.set_defaults(func=cmd_demo)

    from llm_router.security.keys_cli import add_keys_parser

    add_keys_parser(sub)

    from llm_router.fleetctl import add_fleet_parser

    add_fleet_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
