"""The metrics one router replica exports, declared in one place.

Per-request series are labelled by model and node through ``LabelCap``s, so a fleet with
thousands of models or nodes still yields a bounded number of series per replica.
"""

from __future__ import annotations

from llm_router import __version__
from llm_router.observability.metrics import (
    REDIS_BUCKETS,
    LabelCap,
    Registry,
)

#: Distinct label values kept before the rest are reported as ``other``.
MAX_MODEL_LABELS = 64
MAX_NODE_LABELS = 128
MAX_TENANT_LABELS = 32

#: Why a request went where it went (``llm_router_routing_decisions_total{reason}``).
DECISION_REASONS = (
    "routed",
    "queued",
    "failover",
    "excluded",
    "model_not_found",
    "no_capable_nodes",
    "queue_full",
    "queue_timeout",
    "upstream_error",
    "upstream_timeout",
    "node_busy",
    "shutting_down",
    "state_store_unavailable",
    "client_closed",
    "stream_broken",
)


class RouterMetrics:
    def __init__(
        self, *, max_models: int = MAX_MODEL_LABELS, max_nodes: int = MAX_NODE_LABELS
    ) -> None:
        self.registry = Registry()
        self.model_label = LabelCap(max_models)
        self.node_label = LabelCap(max_nodes)
        self.tenant_label = LabelCap(MAX_TENANT_LABELS)
        r = self.registry
        self.build_info = r.gauge(
            "llm_router_build_info", "The router's version (always 1).", ["version"]
        )
        self.build_info.set(1, __version__)
        self.requests = r.counter(
            "llm_router_requests_total",
            "Proxied requests by model, serving node and HTTP status returned to the client.",
            ["model", "node", "status"],
        )
        self.decisions = r.counter(
            "llm_router_routing_decisions_total",
            "Routing decisions by reason (one request may make several: queued, failover...).",
            ["reason"],
        )
        self.affinity = r.counter(
            "llm_router_affinity_total",
            "Requests with affinity keys by outcome: hit (went to the pinned node), moved (the "
            "pin moved; cause unavailable, full or loaded) or new (no pin: a miss).",
            ["outcome", "cause"],
        )
        self.attempts = r.histogram(
            "llm_router_request_attempts",
            "Nodes tried per request.",
            buckets=(1, 2, 3, 4, 6, 8, 16),
        )
        self.overhead = r.histogram(
            "llm_router_overhead_seconds",
            "Time the router itself added to a request: total until the first byte, minus "
            "the queue wait and the nodes' own time to answer.",
        )
        self.upstream = r.histogram(
            "llm_router_upstream_latency_seconds",
            "From sending a request to a node until its response headers arrived.",
            ["model"],
        )
        self.ttfb = r.histogram(
            "llm_router_time_to_first_byte_seconds",
            "From receiving a request until the first byte of the answer was ready to send.",
            ["model"],
        )
        self.duration = r.histogram(
            "llm_router_request_duration_seconds",
            "From receiving a request until its last byte was sent (streams included).",
            ["model"],
        )
        self.queue_wait = r.histogram(
            "llm_router_queue_wait_seconds",
            "Time requests that had to queue waited for a free node.",
            ["model"],
        )
        self.tenant_queue_wait = r.histogram(
            "llm_router_tenant_queue_wait_seconds",
            "Time queued requests waited, by tenant (the first "
            f"{MAX_TENANT_LABELS} seen, then other) and priority band.",
            ["tenant", "band"],
        )
        self.tenant_queue_waiters = r.gauge(
            "llm_router_tenant_queue_waiters",
            "Requests this replica has waiting in the fleet queue, by tenant and band.",
            ["tenant", "band"],
        )
        self.leases_held = r.gauge(
            "llm_router_leases_held", "Leases this replica holds right now (requests in flight)."
        )
        self.queue_waiters = r.gauge(
            "llm_router_queue_waiters", "Requests this replica has waiting in the fleet queue."
        )
        self.redis_seconds = r.histogram(
            "llm_router_redis_command_seconds",
            "Round trip of the fleet's Redis scripts, by script.",
            ["command"],
            buckets=REDIS_BUCKETS,
        )
        self.redis_errors = r.counter(
            "llm_router_redis_errors_total",
            "Redis script calls that failed, by script.",
            ["command"],
        )
        self.decisions_dropped = r.counter(
            "llm_router_decision_log_dropped_total",
            "Recent-decision entries not written to Redis (store unreachable).",
        )
        self.history_dropped = r.counter(
            "llm_router_history_dropped_total",
            "Requests left out of the dashboard's history (store unreachable at the flush).",
        )
        # Fleet-wide views, recomputed from Redis at scrape time (identical on every replica).
        self.fleet_up = r.gauge(
            "llm_router_fleet_state_up", "1 when the fleet state could be read at this scrape."
        )
        self.fleet_nodes = r.gauge(
            "llm_router_fleet_nodes",
            "Known nodes by status and GPU backend.",
            ["status", "backend"],
        )
        self.fleet_node_up = r.gauge(
            "llm_router_fleet_node_up", "1 when the node is online (routable), else 0.", ["node"]
        )
        self.fleet_node_info = r.gauge(
            "llm_router_fleet_node_info",
            "Constant 1 carrying a node's machine name, backend and status.",
            ["node", "machine", "backend", "status"],
        )
        self.fleet_node_leases = r.gauge(
            "llm_router_fleet_node_leases", "Leases in use on the node (all replicas).", ["node"]
        )
        self.fleet_node_capacity = r.gauge(
            "llm_router_fleet_node_capacity", "The node's max_concurrency.", ["node"]
        )
        self.fleet_node_heartbeat_age = r.gauge(
            "llm_router_fleet_node_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat.",
            ["node"],
        )
        self.fleet_queue_depth = r.gauge(
            "llm_router_fleet_queue_depth", "Requests waiting fleet-wide, by model.", ["model"]
        )
        self.fleet_models = r.gauge(
            "llm_router_fleet_models", "Models at least one online node can execute."
        )
