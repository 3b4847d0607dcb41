"""Forward an OpenAI request to the leased node, stream the answer, fail over.

The body is forwarded byte for byte. Until the first byte of the answer is committed to
the client, any connection error, timeout or 5xx excludes the (node, model) pair for the
cool-down (in Redis, so every replica stops picking it), releases the lease and tries the
next node, up to ``max_attempts``. A node's 429 excludes the pair briefly and moves on; it
is passed through only when no other node is left. Any other 4xx is the client's problem
and passes through unchanged. After the first byte nothing is replayed: a failure ends an
SSE stream with one ``data: {"error": ...}`` event.

For a streaming answer the first chunk is read before the client sees the status line, so
a node that sends headers and then dies is still failed over.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp

from llm_router.errors import (
    GatewayTimeout,
    NoCapableNodes,
    RouterError,
    UpstreamError,
    error_body,
)
from llm_router.observability.observer import Observer, RequestTrace
from llm_router.routing.affinity import AFFINITY_HEADER
from llm_router.routing.select import Dispatcher, Lease
from llm_router.state.scripts import NO_AFFINITY, Affinity

log = logging.getLogger(__name__)

# Hop-by-hop and framing headers are the two ends' business, never forwarded; nor is the
# client's credential, which is for this router, not for the node.
_FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "x-request-id", "traceparent", "user-agent")
_DROPPED_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "date",
        "server",
    }
)
_BUSY_COOLDOWN_MS = 1000


@dataclass(frozen=True)
class ProxyConfig:
    max_attempts: int
    exclusion_cooldown_ms: int
    connect_timeout_s: float
    first_byte_timeout_s: float
    idle_timeout_s: float


@dataclass(frozen=True)
class ProxyReply:
    """What goes back to the client: a whole body, or SSE chunks to relay as they come.

    Iterating ``chunks`` to the end (or closing it) releases the node's lease.
    """

    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: AsyncGenerator[bytes, None] | None = None


class _AttemptFailed(Exception):
    def __init__(self, error: RouterError, *, exclude: bool, cooldown_ms: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.exclude = exclude
        self.cooldown_ms = cooldown_ms


class Proxy:
    def __init__(self, dispatcher: Dispatcher, config: ProxyConfig, observer: Observer) -> None:
        self._dispatcher = dispatcher
        self._config = config
        self._observer = observer
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._config.connect_timeout_s,
                sock_read=self._config.idle_timeout_s,
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(
        self,
        *,
        path: str,
        model: str,
        body: bytes,
        headers: Mapping[str, str],
        request_id: str,
        client_gone: Callable[[], Awaitable[object]] | None = None,
        affinity: Affinity = NO_AFFINITY,
    ) -> ProxyReply:
        trace = self._observer.begin(model, request_id)
        try:
            response = await self._forward(
                path, model, body, headers, request_id, trace, client_gone, affinity
            )
        except BaseException as exc:
            self._observer.failed(trace, exc)
            raise
        if response.chunks is None:  # a stream reports when it ends
            self._observer.finish(trace, response.status)
        return response

    async def _forward(
        self,
        path: str,
        model: str,
        body: bytes,
        headers: Mapping[str, str],
        request_id: str,
        trace: RequestTrace,
        client_gone: Callable[[], Awaitable[object]] | None,
        affinity: Affinity,
    ) -> ProxyReply:
        assert self._session is not None, "Proxy.start() was not awaited"
        out_headers = {h: headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in headers}
        out_headers["x-request-id"] = request_id
        last_error: RouterError | None = None
        busy_response: tuple[int, bytes, dict[str, str]] | None = None
        for _attempt in range(self._config.max_attempts):
            try:
                lease = await self._dispatcher.acquire(model, client_gone, affinity)
            except NoCapableNodes:
                # Every node is excluded or gone; report what the last one said.
                if busy_response is not None:
                    status, content, resp_headers = busy_response
                    return ProxyReply(status, resp_headers, content)
                if last_error is not None:
                    raise last_error from None
                raise
            self._observer.leased(trace, lease.node_id, lease.queued_ms, lease.affinity)
            try:
                return await self._attempt(lease, path, body, out_headers, request_id, trace)
            except _AttemptFailed as failed:
                self._observer.failed_attempt(trace, excluded=failed.exclude)
                last_error = failed.error
                if isinstance(failed.error, _Busy):
                    busy_response = failed.error.response
                log.info("attempt on node %s failed for %s: %s", lease.node_id, model, failed.error)
                await self._dispatcher.release(
                    lease,
                    exclude_model=model if failed.exclude else "",
                    cooldown_ms=failed.cooldown_ms,
                )
            except BaseException:
                # Cancelled (client gone) or a bug: free the slot without awaiting anything.
                self._dispatcher.release_soon(lease)
                raise
        if busy_response is not None:
            status, content, resp_headers = busy_response
            return ProxyReply(status, resp_headers, content)
        assert last_error is not None
        raise last_error

    async def _attempt(
        self,
        lease: Lease,
        path: str,
        body: bytes,
        headers: dict[str, str],
        request_id: str,
        trace: RequestTrace,
    ) -> ProxyReply:
        assert self._session is not None
        url = lease.url + path
        trace.sending()
        try:
            async with asyncio.timeout(self._config.first_byte_timeout_s):
                upstream = await self._session.post(url, data=body, headers=headers)
        except TimeoutError as exc:
            raise self._fail(
                GatewayTimeout(f"node {lease.node_id} did not answer in time")
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._fail(UpstreamError(f"node {lease.node_id} unreachable: {exc}")) from exc

        response_headers = self._response_headers(upstream.headers, lease, request_id)
        status = upstream.status
        if status == 429:
            content = await self._safe_read(upstream)
            raise _AttemptFailed(
                _Busy((status, content, response_headers)),
                exclude=True,
                cooldown_ms=min(_BUSY_COOLDOWN_MS, self._config.exclusion_cooldown_ms),
            )
        if status >= 500:
            upstream.release()
            raise self._fail(UpstreamError(f"node {lease.node_id} answered {status}"))

        is_stream = upstream.content_type == "text/event-stream"
        if not is_stream:
            try:
                content = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                upstream.release()
                raise self._fail(
                    UpstreamError(f"node {lease.node_id} failed mid-response: {exc}")
                ) from exc
            trace.answered()
            self._dispatcher.release_soon(lease)
            return ProxyReply(status, response_headers, content)

        try:
            async with asyncio.timeout(self._config.first_byte_timeout_s):
                first = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            upstream.release()
            raise self._fail(
                UpstreamError(f"node {lease.node_id} failed before streaming")
            ) from exc
        if not first:
            upstream.release()
            raise self._fail(UpstreamError(f"node {lease.node_id} closed an empty stream"))
        trace.answered(stream=True)
        return ProxyReply(
            status, response_headers, chunks=self._relay(upstream, first, lease, trace, status)
        )

    async def _relay(
        self,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        lease: Lease,
        trace: RequestTrace,
        status: int,
    ) -> AsyncGenerator[bytes, None]:
        broken = False
        try:
            yield first
            async for chunk in upstream.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("stream from node %s broke: %s", lease.node_id, exc)
            broken = True
            error = error_body(
                f"the node serving this stream failed: {type(exc).__name__}",
                UpstreamError.error_type,
                UpstreamError.code,
            )
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            upstream.release()
            self._observer.finish(trace, status, broken=broken)
            self._dispatcher.release_soon(lease)

    def _fail(self, error: RouterError) -> _AttemptFailed:
        return _AttemptFailed(error, exclude=True, cooldown_ms=self._config.exclusion_cooldown_ms)

    @staticmethod
    async def _safe_read(upstream: aiohttp.ClientResponse) -> bytes:
        try:
            return await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            return b""
        finally:
            upstream.release()

    @staticmethod
    def _response_headers(
        upstream_headers: Mapping[str, str], lease: Lease, request_id: str
    ) -> dict[str, str]:
        headers = {
            k: v for k, v in upstream_headers.items() if k.lower() not in _DROPPED_RESPONSE_HEADERS
        }
        headers["x-llm-router-node"] = lease.node_id
        headers["x-request-id"] = request_id
        if lease.queued_ms is not None:
            headers["x-queue-status"] = "queued"
            headers["x-queue-wait-ms"] = str(round(lease.queued_ms))
        if lease.affinity:
            # "moved:full" → "moved": the cause is for operators (decisions, metrics).
            headers[AFFINITY_HEADER] = lease.affinity.partition(":")[0]
        return headers


class _Busy(UpstreamError):
    status_code = 429
    code = "node_busy"

    def __init__(self, response: tuple[int, bytes, dict[str, str]]) -> None:
        super().__init__("every capable node is busy")
        self.response = response
