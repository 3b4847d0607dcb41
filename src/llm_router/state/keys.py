"""Every Redis key of a fleet, built in one place.

All keys start with the fleet prefix inside a hash tag (``{llmr}:...``) so that they share
one Cluster slot and every multi-key script is valid on Redis Cluster. The Lua scripts
receive the base (``{llmr}:``) as ``KEYS[1]`` and append the same suffixes
as below; ``docs/redis-keys.md`` lists them for operators. A change here is a change to
the Redis layout and must be mirrored in the scripts' suffix helpers and that document.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "llmr"

    @property
    def base(self) -> str:
        """``{prefix}:`` — what every key starts with; scripts get it as ARGV[1]."""
        return f"{{{self.prefix}}}:"

    def node(self, node_id: str) -> str:
        """hash: the node record (registration + last heartbeat)."""
        return f"{self.base}node:{node_id}"

    def node_metrics(self, node_id: str) -> str:
        """string: the node's last heartbeat's display metrics, one JSON object (kept out
        of the node hash, whose small encoding holds values of at most 64 bytes)."""
        return f"{self.base}node-metrics:{node_id}"

    @property
    def nodes_alive(self) -> str:
        """zset: node id → liveness deadline (ms since epoch, Redis clock)."""
        return f"{self.base}nodes:alive"

    @property
    def nodes_index(self) -> str:
        """hash: ``machine_name:runtime_port`` → node id."""
        return f"{self.base}nodes:index"

    @property
    def nodes_drained(self) -> str:
        """hash: ``machine_name:runtime_port`` → when an admin drained it (ms); kept across
        re-registrations and deletions until undrained."""
        return f"{self.base}nodes:drained"

    def key_identities(self, key_id: str) -> str:
        """set: ``machine_name:runtime_port`` identities registered with one node key (its
        public id); bounded by ``max_identities_per_node_key``."""
        return f"{self.base}nodekey:{key_id}:identities"

    @property
    def nodes_swept(self) -> str:
        """string: liveness deadline (ms) up to which lapsed nodes have been taken out of
        their models' ``model:<m>:nodes`` and ``model:<m>:load``."""
        return f"{self.base}nodes:swept"

    def model_nodes(self, model: str) -> str:
        """zset: node id → when it joined (ms), for nodes that can execute ``model`` and
        have not been swept since their liveness lapsed; liveness is ``nodes_alive``."""
        return f"{self.base}model:{model}:nodes"

    def model_load(self, model: str) -> str:
        """zset: node id → routing score (load first, then capability and latency); every
        stored score is at most the node's real score for the model."""
        return f"{self.base}model:{model}:load"

    def raised(self, node_id: str) -> str:
        """hash: model → floor (score below utilisation) of each of the node's load-index
        entries written above its floor since the node was last idle; releases rewrite
        only these."""
        return f"{self.base}raised:{node_id}"

    @property
    def queues_active(self) -> str:
        """set: models whose fleet-wide queue may be non-empty (releases wake only these)."""
        return f"{self.base}queues:active"

    def model_rr(self, model: str) -> str:
        """string: rotation counter used to break exact ties between equal nodes."""
        return f"{self.base}model:{model}:rr"

    @property
    def models_created(self) -> str:
        """hash: model id → first time (s) any node advertised it (``created`` in /v1/models)."""
        return f"{self.base}models:created"

    @property
    def models_version(self) -> str:
        """string: a counter moved by every change to which live node executes which model;
        replicas cache ``/v1/models`` under it."""
        return f"{self.base}models:version"

    @property
    def models_known(self) -> str:
        """zset: model id → last time (ms) any node advertised it, installed or executable."""
        return f"{self.base}models:known"

    def leases(self, node_id: str) -> str:
        """zset: lease id → deadline (ms); one member per in-flight request on the node."""
        return f"{self.base}leases:{node_id}"

    def queue(self, model: str) -> str:
        """zset: ticket → place tag (band, then the tenant's fair virtual time): the
        fleet-wide queue for ``model``, served lowest score first."""
        return f"{self.base}queue:{model}"

    def queue_alive(self, model: str) -> str:
        """zset: ticket → deadline (ms); a ticket whose waiter stopped renewing it is dead.

        Not ``queue:<model>:alive``: model ids may contain ``:``, and the queue of a model
        named ``m:alive`` must not be the liveness set of ``m``'s queue.
        """
        return f"{self.base}queue-alive:{model}"

    def queue_fair(self, model: str) -> str:
        """hash: ``v:<band>`` → the band's virtual time, ``f:<band>:<tenant>`` → the
        tenant's virtual finish time; dropped when an arrival finds the queue empty."""
        return f"{self.base}queue-fair:{model}"

    def key_flight(self, key_id: str) -> str:
        """zset: "<node id> <lease id>" → when granted (ms): a key's requests in flight across
        the fleet; a member counts while its lease is live and is dropped once it is not;
        expires a day after its key last granted or found requests running."""
        return f"{self.base}key-flight:{key_id}"

    def queue_info(self, model: str) -> str:
        """hash: ticket → "<tenant> <band> <arrival µs>" of each queued ticket, for operators
        (``llm-router fleet queues``); routing never reads it."""
        return f"{self.base}queue-info:{model}"

    def queue_shed(self, model: str) -> str:
        """zset: ticket → until when (ms) its waiter is told it was shed from a full queue."""
        return f"{self.base}queue-shed:{model}"

    def excluded(self, node_id: str) -> str:
        """zset: model → end of the node's cool-down for that model (ms)."""
        return f"{self.base}excluded:{node_id}"

    def pin(self, affinity_key: str) -> str:
        """string: node id that last served requests with this affinity key (TTL)."""
        return f"{self.base}pin:{affinity_key}"

    def unsupported(self, node_id: str) -> str:
        """zset: endpoint family → end of the cool-down during which the node is not asked
        for it (it answered 404/405/501 for the endpoint itself)."""
        return f"{self.base}unsupported:{node_id}"

    def response(self, response_id: str) -> str:
        """hash {node, model}, with a TTL: the node that created a stored response."""
        return f"{self.base}response:{response_id}"

    def failures(self, node_id: str, model: str) -> str:
        """zset: request digest → time (ms) it failed on the node for ``model``.

        The evidence that excludes a pair: enough different requests within the window.
        Node ids never contain ``:``, so the model part is unambiguous.
        """
        return f"{self.base}failures:{node_id}:{model}"

    @property
    def events(self) -> str:
        """pub/sub channel: model ids whose capacity was freed (queue wake-ups), and tickets
        shed from a full queue (their waiters learn it at once)."""
        return f"{self.base}events:capacity"

    @property
    def decisions(self) -> str:
        """list: the fleet's most recent routing decisions (JSON, newest first), capped."""
        return f"{self.base}decisions:recent"

    def history(self, bucket_start_s: int) -> str:
        """hash: one time bucket of the fleet's traffic (request, error and latency-histogram
        counts), summed over replicas; expires once it leaves the dashboard's window."""
        return f"{self.base}history:{bucket_start_s}"

    def history_peaks(self, bucket_start_s: int) -> str:
        """zset: one time bucket's peak gauges (queue depth per model, load per node), the
        highest sample any replica took in the bucket; expires with ``history``."""
        return f"{self.base}history-peaks:{bucket_start_s}"

    @property
    def history_sampler(self) -> str:
        """string (``SET NX PX``): held by the replica that samples the fleet's peaks for the
        history in this period; every other replica only adds its counts."""
        return f"{self.base}history:sampler"

    @property
    def api_keys(self) -> str:
        """hash: sha256(key) → JSON {scope, name, created}: keys managed in Redis."""
        return f"{self.base}apikeys"

    def rate(self, key_id: str) -> str:
        """zset: per-key sliding window of request times (rate limits)."""
        return f"{self.base}rate:{key_id}"
