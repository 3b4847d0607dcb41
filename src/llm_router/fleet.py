"""Everything one router replica holds, built from its settings and passed explicitly.

A ``Fleet`` lives on ``app.state.fleet``; handlers reach it through the request. Nothing
here is process-global, so tests can run several replicas in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import httpx

from llm_router.auth import KeyRing
from llm_router.errors import StateStoreUnavailable
from llm_router.observability.router_metrics import RouterMetrics
from llm_router.observability.telemetry import Telemetry
from llm_router.observability.tenant_view import limited_keys
from llm_router.observability.timed_scripts import TimedScripts
from llm_router.observability.worker_metrics import WorkerSlot
from llm_router.routing.affinity import AffinityPolicy
from llm_router.routing.node_hop import node_ssl_context
from llm_router.routing.proxy import Proxy, ProxyConfig
from llm_router.routing.queue import CapacityEvents
from llm_router.routing.select import Dispatcher, Limits
from llm_router.settings import RouterSettings
from llm_router.state.connect import Store, open_store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import STORE_DOWN_ERRORS, FleetScripts

log = logging.getLogger(__name__)

_PRUNE_PERIOD_S = 30.0


@dataclass
class Fleet:
    settings: RouterSettings
    store: Store
    keys: Keys
    scripts: FleetScripts
    registry: NodeRegistry
    dispatcher: Dispatcher
    events: CapacityEvents
    proxy: Proxy
    keyring: KeyRing
    control_http: httpx.AsyncClient
    telemetry: Telemetry
    affinity: AffinityPolicy
    shutting_down: bool = False
    _janitor: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        settings: RouterSettings,
        store: Store | None = None,
        *,
        worker: WorkerSlot | None = None,
    ) -> Fleet:
        store = store or open_store(settings.redis_url, timeout_s=settings.redis_socket_timeout_s)
        keys = Keys(settings.key_prefix)
        metrics = RouterMetrics()
        scripts = TimedScripts(store.redis, keys, metrics, store.fast)
        forget_ms = int(settings.node_forget_s * 1000)
        registry = NodeRegistry(
            store.redis,
            keys,
            scripts,
            RegistryConfig(
                alive_ttl_ms=int(settings.node_timeout_s * 1000),
                forget_ms=forget_ms,
                default_max_concurrency=settings.default_max_concurrency,
            ),
        )
        keyring = KeyRing.from_settings(settings)
        telemetry = Telemetry.build(
            settings,
            store.redis,
            keys,
            registry,
            metrics,
            worker,
            limited_keys=lambda: limited_keys(keyring.managed),
        )
        events = CapacityEvents(store.pubsub_client(), keys.events)
        dispatcher = Dispatcher(
            scripts,
            events,
            Limits(
                lease_ttl_ms=int(settings.lease_ttl_s * 1000),
                queue_max=settings.queue_max,
                queue_timeout_s=settings.queue_timeout_s,
                ticket_ttl_ms=int(settings.queue_ticket_ttl_s * 1000),
                forget_ms=forget_ms,
                retry_after_s=settings.heartbeat_interval_s,
            ),
        )
        node_tls = node_ssl_context(settings)
        proxy = Proxy(
            dispatcher,
            ProxyConfig(
                max_attempts=settings.max_attempts,
                exclusion_cooldown_ms=int(settings.exclusion_cooldown_s * 1000),
                connect_timeout_s=settings.connect_timeout_s,
                first_byte_timeout_s=settings.first_byte_timeout_s,
                idle_timeout_s=settings.idle_timeout_s,
                response_body_timeout_s=settings.response_body_timeout_s,
                max_response_bytes=settings.max_response_bytes,
                exclusion_failures=settings.exclusion_failures,
                exclusion_window_ms=int(settings.exclusion_window_s * 1000),
                node_ssl=node_tls,
            ),
            telemetry.observer,
        )
        return cls(
            settings=settings,
            store=store,
            keys=keys,
            scripts=scripts,
            registry=registry,
            dispatcher=dispatcher,
            events=events,
            proxy=proxy,
            keyring=keyring,
            control_http=httpx.AsyncClient(timeout=settings.model_fetch_timeout_s, verify=node_tls),
            telemetry=telemetry,
            affinity=AffinityPolicy(
                enabled=settings.affinity,
                ttl_ms=int(settings.affinity_ttl_s * 1000),
                margin=round(settings.affinity_margin * 1_000_000),
            ),
        )

    async def model_of_response(self, response_id: str) -> str | None:
        """The model a stored response was created with, if its id is still recorded."""
        try:
            raw = await self.store.redis.hget(self.keys.response(response_id), "model")
        except STORE_DOWN_ERRORS as exc:
            raise StateStoreUnavailable(f"state store unavailable: {exc}") from exc
        return raw.decode() if isinstance(raw, bytes) else raw

    async def start(self) -> None:
        await self.proxy.start()
        self.events.start()
        self.dispatcher.start()
        self.telemetry.start()
        self._janitor = asyncio.create_task(self._prune_forever(), name="fleet-janitor")

    def begin_shutdown(self) -> None:
        """Stop taking requests: readiness fails, queued requests are handed back (503)."""
        self.shutting_down = True
        self.dispatcher.closing = True
        self.events.wake_all()

    async def stop(self) -> None:
        self.begin_shutdown()
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        await self.dispatcher.stop()
        await self.events.stop()
        await self.proxy.close()
        await self.telemetry.stop()
        await self.control_http.aclose()
        await self.store.close()

    async def _prune_forever(self) -> None:
        # Every replica prunes; the script is idempotent, so no leader is needed.
        while True:
            await asyncio.sleep(_PRUNE_PERIOD_S)
            try:
                await self.registry.prune()
            except Exception as exc:
                log.debug("prune skipped: %s", exc)
