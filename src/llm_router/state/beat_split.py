"""How a heartbeat's fields split before they reach the heartbeat script.

Display metrics change on every beat and no script reads them: they travel as one JSON
object (name -> the string the record stores) that the script stores as one hash field
without decoding it. Routing state is what the scripts read; it travels field by field as
before, with a digest of its canonical encoding. The script skips decoding and storing it
when the digest matches the one stored with the node's last beat.

The inputs that jitter on every beat enter the digest coarse, exactly as the scripts fold
them into the score's floor (state/lua/lib.lua: latency_band, runtime_pressure): a steady
node's digest then stays the same from beat to beat. Their raw values are still sent with
the routing fields, so a beat whose digest differs stores them for the scripts to read (a
value within the same band or pressure digit gives the same floor), and with the metrics
for the record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Shown on the record, never read by a script.
METRIC_FIELDS = frozenset(
    {
        "cpu_usage",
        "memory_usage",
        "active_requests",
        "gpu_usage",
        "gpu_memory_usage",
        "gpu_memory_used_mb",
        "gpu_temperature",
        "ready_models",
    }
)
#: Read by the scripts through their coarse value, shown raw: in both halves.
COARSE_FIELDS = frozenset({"average_response_time_ms", "runtime_load"})

_MAX_PRESSURE = 9
_MAX_LATENCY_MS = 9999
_LATENCY_BANDS = 7


def latency_band(ms: float) -> int:
    """Doubling bands from 100 ms (lib.lua's latency_band, after base_floor's clamp)."""
    ms = min(max(ms, 0.0), _MAX_LATENCY_MS)
    band, edge = 0, 100.0
    while ms >= edge and band < _LATENCY_BANDS:
        band, edge = band + 1, edge * 2
    return band


def runtime_pressure(load: Mapping[str, Any]) -> int:
    """Requests waiting in the runtime plus its KV use in fifths, 0..9 (lib.lua's)."""
    waiting = max(float(load.get("waiting") or 0), 0.0)
    kv = min(max(float(load.get("kv_cache_usage") or 0), 0.0), 1.0)
    return min(int(waiting + int(kv * 5)), _MAX_PRESSURE)


@dataclass(frozen=True)
class SplitBeat:
    #: Routing fields, stored field by field when the digest differs.
    fields: dict[str, str]
    #: The metrics field's value: a JSON object of the display fields' stored strings.
    metrics: str
    digest: str
    #: A short digest of which metrics are sent: the script reconciles the metrics a beat
    #: leaves out only when it moved.
    names: str


def _coarse(name: str, value: str) -> int:
    if name == "runtime_load":
        load = json.loads(value)
        return runtime_pressure(load if isinstance(load, dict) else {})
    return latency_band(float(value))


def split_beat(encoded: Mapping[str, str], executable_models: Sequence[str] | None) -> SplitBeat:
    """Split a beat's stored strings; ``executable_models`` None means not sent."""
    fields = {k: v for k, v in encoded.items() if k not in METRIC_FIELDS}
    metrics = {k: v for k, v in encoded.items() if k in METRIC_FIELDS or k in COARSE_FIELDS}
    state: dict[str, Any] = {k: v for k, v in fields.items() if k not in COARSE_FIELDS}
    for name in COARSE_FIELDS & fields.keys():
        state[name] = _coarse(name, fields[name])
    # Which metrics are sent is routing state too: a change keeps the absent ones' values.
    state["metrics"] = sorted(metrics)
    state["executable_models"] = None if executable_models is None else list(executable_models)
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return SplitBeat(
        fields=fields,
        metrics=json.dumps(metrics, separators=(",", ":")),
        # 96 bits: the stamp it goes into stays within the 64 bytes a small hash value holds.
        digest=hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest(),
        names=hashlib.blake2b(",".join(sorted(metrics)).encode(), digest_size=4).hexdigest(),
    )
