"""Forward a request to the leased node, stream the answer, fail over.

The body is forwarded byte for byte, with the method and path (query included) the client
used; what differs between endpoints comes from their row in ``endpoints``. Until the first
byte of the answer is committed to the client, any connection error, timeout or 5xx
excludes the (node, model) pair for the cool-down (in Redis, so every replica stops picking
it), releases the lease and tries the next node, up to ``max_attempts``. A node's 429
excludes the pair briefly and moves on; it is passed through only when no other node is
left. Any other 4xx is the client's problem and passes through unchanged. After the first
byte nothing is replayed: a failure ends an SSE stream with one error event in the
endpoint's dialect.

A node answering 405 or 501, or 404 for the path rather than the model, does not do that
endpoint: nothing is excluded, the (node, endpoint family) pair is remembered in Redis for
the cool-down, and the next candidate is tried; the node's own answer is passed through
when none is left. A request for a stored response goes to the node holding it and only
there; the id of a response a node creates is recorded with the lease's release.

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
    NotImplementedByFleet,
    RouterError,
    UpstreamError,
)
from llm_router.observability.observer import Observer, RequestTrace
from llm_router.routing.affinity import AFFINITY_HEADER
from llm_router.routing.endpoints import Dialect, Endpoint
from llm_router.routing.response_ids import StreamIdFinder, id_of_object
from llm_router.routing.select import Dispatcher, Lease, Want
from llm_router.state.scripts import NO_AFFINITY, Affinity, Ending

log = logging.getLogger(__name__)

# Hop-by-hop and framing headers are the two ends' business, never forwarded; nor is the
# client's credential, which is for this router, not for the node.
_FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "x-request-id",
    "traceparent",
    "user-agent",
    "anthropic-version",
    "anthropic-beta",
)
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
#: Answers meaning "this node does not serve this endpoint" (404 only when not about the model).
_DECLINED = frozenset({404, 405, 501})


def declines_endpoint(status: int, content: bytes) -> bool:
    """A 405/501, or a 404 whose body does not speak of a model: llama.cpp ("File Not
    Found"), vLLM and FastAPI ({"detail": "Not Found"}) and our agent answer an unknown path
    without the word, while every one of them names the model when it is the model that is
    missing."""
    if status not in _DECLINED:
        return False
    return status != 404 or b"model" not in content.lower()


def stream_error_event(dialect: Dialect, message: str) -> bytes:
    """The one event that ends a broken stream, in the stream's own dialect."""
    if dialect is Dialect.ANTHROPIC:
        data = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"
    error = UpstreamError(message)
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


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


@dataclass(frozen=True)
class Call:
    """One client request as the proxy needs it."""

    endpoint: Endpoint
    target: str  # the path the client asked for, query string included
    model: str
    body: bytes
    headers: Mapping[str, str]
    request_id: str
    response_id: str = ""  # a stored response this request must follow to its node
    affinity: Affinity = NO_AFFINITY  # soft pins: the conversation's previous node


class _AttemptFailed(Exception):
    def __init__(
        self, error: RouterError, *, exclude: bool, cooldown_ms: int, declined: bool = False
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.exclude = exclude
        self.cooldown_ms = cooldown_ms
        self.declined = declined


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
        self, call: Call, client_gone: Callable[[], Awaitable[object]] | None = None
    ) -> ProxyReply:
        trace = self._observer.begin(call.model, call.request_id, call.headers)
        try:
            response = await self._forward(call, trace, client_gone)
        except BaseException as exc:
            self._observer.failed(trace, exc)
            raise
        if response.chunks is None:  # a stream reports when it ends
            self._observer.finish(trace, response.status)
        return response

    async def _forward(
        self,
        call: Call,
        trace: RequestTrace,
        client_gone: Callable[[], Awaitable[object]] | None,
    ) -> ProxyReply:
        assert self._session is not None, "Proxy.start() was not awaited"
        headers = call.headers
        out_headers = {h: headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in headers}
        out_headers["x-request-id"] = call.request_id
        want = Want(family=call.endpoint.family, response_id=call.response_id)
        last_error: RouterError | None = None
        # A node's own answer (busy, or "does not do that"), passed on if nobody else can.
        own_answer: tuple[int, bytes, dict[str, str]] | None = None
        for _attempt in range(self._config.max_attempts):
            try:
                lease = await self._dispatcher.acquire(call.model, client_gone, want, call.affinity)
            except (NoCapableNodes, NotImplementedByFleet):
                # Every node is excluded, declined or gone; report what the last one said.
                if own_answer is not None:
                    status, content, resp_headers = own_answer
                    return ProxyReply(status, resp_headers, content)
                if last_error is not None:
                    raise last_error from None
                raise
            self._observer.leased(trace, lease.node_id, lease.queued_ms, lease.affinity)
            self._observer.propagate(trace, out_headers)
            try:
                return await self._attempt(lease, call, out_headers, trace)
            except _AttemptFailed as failed:
                self._observer.failed_attempt(trace, excluded=failed.exclude)
                last_error = failed.error
                if isinstance(failed.error, _NodeAnswer):
                    own_answer = failed.error.response
                log.info(
                    "attempt on node %s failed for %s: %s", lease.node_id, call.model, failed.error
                )
                await self._dispatcher.release(
                    lease,
                    Ending(
                        lease.node_id,
                        lease.lease_id,
                        exclude_model=call.model if failed.exclude else "",
                        cooldown_ms=failed.cooldown_ms,
                        refused_family=call.endpoint.family if failed.declined else "",
                    ),
                )
            except BaseException:
                # Cancelled (client gone) or a bug: free the slot without awaiting anything.
                self._dispatcher.release_soon(lease)
                raise
        if own_answer is not None:
            status, content, resp_headers = own_answer
            return ProxyReply(status, resp_headers, content)
        assert last_error is not None
        raise last_error

    async def _attempt(
        self, lease: Lease, call: Call, headers: dict[str, str], trace: RequestTrace
    ) -> ProxyReply:
        assert self._session is not None
        url = lease.url + call.target
        method = call.endpoint.method
        trace.sending()
        try:
            async with asyncio.timeout(self._config.first_byte_timeout_s):
                upstream = await self._session.request(
                    method, url, data=call.body or None, headers=headers
                )
        except TimeoutError as exc:
            raise self._fail(
                GatewayTimeout(f"node {lease.node_id} did not answer in time")
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._fail(UpstreamError(f"node {lease.node_id} unreachable: {exc}")) from exc

        response_headers = self._response_headers(upstream.headers, lease, call.request_id)
        status = upstream.status
        if status == 429:
            content = await self._safe_read(upstream)
            raise _AttemptFailed(
                _NodeAnswer((status, content, response_headers), "every capable node is busy"),
                exclude=True,
                cooldown_ms=min(_BUSY_COOLDOWN_MS, self._config.exclusion_cooldown_ms),
            )
        if status in _DECLINED:
            content = await self._safe_read(upstream)
            # A stored response has no other node to try: its node's answer is final.
            if not call.response_id and declines_endpoint(status, content):
                raise _AttemptFailed(
                    _NodeAnswer(
                        (status, content, response_headers),
                        f"node {lease.node_id} does not serve {call.endpoint.path}",
                    ),
                    exclude=False,
                    cooldown_ms=self._config.exclusion_cooldown_ms,
                    declined=True,
                )
            return self._answered(lease, trace, status, response_headers, content)
        if status >= 500:
            upstream.release()
            raise self._fail(UpstreamError(f"node {lease.node_id} answered {status}"))
        if not call.endpoint.may_answer(status, upstream.content_type):
            upstream.release()
            raise _AttemptFailed(
                UpstreamError(
                    f"node {lease.node_id} answered {call.endpoint.path} with "
                    f"'{upstream.content_type}'"
                ),
                exclude=False,
                cooldown_ms=0,
            )

        is_stream = upstream.content_type == "text/event-stream"
        if not is_stream:
            try:
                content = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                upstream.release()
                raise self._fail(
                    UpstreamError(f"node {lease.node_id} failed mid-response: {exc}")
                ) from exc
            response_id = ""
            if call.endpoint.records_response and status == 200:
                response_id = id_of_object(content)
            if response_id:
                # Awaited: the id must be in Redis before its client can name it elsewhere.
                # Still one round trip: the record rides on the release.
                trace.answered()
                ending = Ending(
                    lease.node_id,
                    lease.lease_id,
                    response_id=response_id,
                    response_model=call.model,
                )
                await self._dispatcher.release(lease, ending)
                return ProxyReply(status, response_headers, content)
            return self._answered(lease, trace, status, response_headers, content)

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
            status,
            response_headers,
            chunks=self._relay(upstream, first, lease, call, trace, status),
        )

    def _answered(
        self,
        lease: Lease,
        trace: RequestTrace,
        status: int,
        headers: dict[str, str],
        content: bytes,
    ) -> ProxyReply:
        trace.answered()
        self._dispatcher.release_soon(lease)
        return ProxyReply(status, headers, content)

    async def _relay(
        self,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        lease: Lease,
        call: Call,
        trace: RequestTrace,
        status: int,
    ) -> AsyncGenerator[bytes, None]:
        broken = closed = False
        finder = StreamIdFinder() if call.endpoint.records_response and status == 200 else None
        try:
            if finder is not None:
                finder.feed(first)
            yield first
            async for chunk in upstream.content.iter_any():
                if finder is not None and not finder.found:
                    finder.feed(chunk)
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            # Closed or cancelled before the node ended the stream: the client left.
            closed = True
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("stream from node %s broke: %s", lease.node_id, exc)
            broken = True
            yield stream_error_event(
                call.endpoint.dialect,
                f"the node serving this stream failed: {type(exc).__name__}",
            )
        finally:
            upstream.release()
            self._observer.finish(
                trace, status, outcome="client_closed" if closed else None, broken=broken
            )
            found = finder.found if finder is not None else ""
            self._dispatcher.release_soon(
                lease,
                _recording(lease, found, call.model),
            )

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


def _recording(lease: Lease, response_id: str, model: str) -> Ending:
    """The end of a lease whose node created the stored response ``response_id`` ("" none)."""
    return Ending(lease.node_id, lease.lease_id, response_id=response_id, response_model=model)


class _NodeAnswer(UpstreamError):
    """A node's answer that is not an error of the node, kept to pass on if no other node
    can do better (busy, or it does not serve the endpoint)."""

    code = "node_answer"

    def __init__(self, response: tuple[int, bytes, dict[str, str]], message: str) -> None:
        super().__init__(message)
        self.response = response
