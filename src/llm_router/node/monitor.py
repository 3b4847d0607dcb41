"""Reads the runtime once per heartbeat and keeps the agent's view of it current.

Every reading is logged at DEBUG; a change (status, models, capacity, loaded models) gets
one INFO line, and a wrong or missing key one ERROR line naming the flag to set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from llm_router.gpu import ModelSpec
from llm_router.node.catalog import merge_models
from llm_router.node.runtimes import RuntimeAdapter, RuntimeHttp, RuntimeReport, kind_of
from llm_router.node.runtimes.base import RuntimeStatus
from llm_router.node.state import DEFAULT_MAX_CONCURRENCY, Inventory, NodeState

log = logging.getLogger("llm_router.node")

# A whole reading (several calls) must fit well inside the router's offline timeout: a
# runtime that hangs is unreachable, and the heartbeat that says so still goes out.
READ_BUDGET_S = 3.0

_DOWN_LEVEL = {
    RuntimeStatus.LOADING: logging.INFO,
    RuntimeStatus.UNREACHABLE: logging.WARNING,
    RuntimeStatus.UNAUTHORIZED: logging.ERROR,
}


def capacity_choice(flag: int | None, reported: int | None) -> tuple[int, str]:
    """The node's max_concurrency and where it came from: the flag wins over the runtime."""
    if flag is not None:
        return flag, "flag"
    if reported is not None:
        return reported, "runtime"
    return DEFAULT_MAX_CONCURRENCY, "default"


class RuntimeMonitor:
    def __init__(
        self,
        state: NodeState,
        adapter: RuntimeAdapter,
        http: RuntimeHttp,
        catalog: Sequence[ModelSpec] = (),
        *,
        max_concurrency: int | None = None,
        version_override: str | None = None,
    ) -> None:
        self.state = state
        self.adapter = adapter
        self.http = http
        self.catalog = tuple(catalog)
        self.max_concurrency = max_concurrency
        self.version_override = version_override
        self.readings = 0

    async def refresh(self) -> RuntimeReport:
        try:
            report = await asyncio.wait_for(self.adapter.read(self.http), READ_BUDGET_S)
        except TimeoutError:
            report = RuntimeReport(
                RuntimeStatus.UNREACHABLE,
                f"{self.http.base_url} did not answer within {READ_BUDGET_S:g}s",
            )
        self.readings += 1
        log.debug("runtime %s: %s %s", self.http.base_url, report.status, report.detail)
        if self.version_override and report.version is None:
            report = dataclasses.replace(report, version=self.version_override)
        self._apply(report)
        return report

    def _apply(self, report: RuntimeReport) -> None:
        state = self.state
        previous = state.runtime
        state.runtime_kind = str(kind_of(self.adapter))
        if report.status is not RuntimeStatus.READY:
            state.runtime = report
            if previous.status is not report.status or self.readings == 1:
                self._log_down(report)
            return
        specs = merge_models(self.catalog, report.models or ())
        inventory = Inventory.build(state.gpu.backend, specs)
        capacity, source = capacity_choice(self.max_concurrency, report.capacity)
        changed = (
            previous.status is not RuntimeStatus.READY
            or inventory != state.inventory
            or capacity != state.max_concurrency
            or report.loaded != previous.loaded
        )
        state.inventory = inventory
        state.max_concurrency, state.max_concurrency_source = capacity, source
        state.runtime = report
        if changed:
            skipped = [m for m in inventory.installed if m not in inventory.executable]
            log.info(
                "runtime %s ready (%s%s): backend %s executable %s%s; loaded %s; "
                "max_concurrency %d (%s)",
                self.http.base_url,
                state.runtime_kind,
                f" {report.version}" if report.version else "",
                inventory.backend,
                list(inventory.executable),
                f", installed but not executable here {skipped}" if skipped else "",
                list(report.loaded),
                capacity,
                source,
            )

    def _log_down(self, report: RuntimeReport) -> None:
        if report.status is RuntimeStatus.UNAUTHORIZED:
            log.error(
                "runtime %s refused the agent (%s): set --runtime-api-key "
                "(LLM_ROUTER_RUNTIME_API_KEY) to the runtime's API key; "
                "the node takes no requests until then",
                self.http.base_url,
                report.detail,
            )
            return
        log.log(
            _DOWN_LEVEL[report.status],
            "runtime %s is %s (%s); the node takes no requests until it is ready",
            self.http.base_url,
            report.status,
            report.detail,
        )
