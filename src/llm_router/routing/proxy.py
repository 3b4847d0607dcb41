"""Forward a request to the leased node, stream the answer, fail over.

The body is forwarded byte for byte, with the method and path (query included) the client
used; what differs between endpoints comes from their row in ``endpoints``. Until the first
byte of the answer is committed to the client, a connection error, timeout, 5xx, redirect
(never followed), oversized answer or one of a media type the endpoint does not give
releases the lease and tries another node (never one this request already failed on), up
to ``max_attempts``. What the failure says about the node is judged in ``attempts.py`` and
counted in Redis (``fail.lua``), so every replica stops picking a (node, model) pair once
the evidence says the node is broken. A node's 429 skips the pair briefly and moves on; it
is passed through only when no other node is left. Any other 4xx is the client's problem
and passes through unchanged. After the first byte nothing is replayed: a failure ends an
SSE stream with one error event in the endpoint's dialect.

A node answering 405 or 501, or 404 for the path rather than the model, does not do that
endpoint: nothing is excluded, the (node, endpoint family) pair is remembered in Redis for
the cool-down, and the next candidate is tried; the node's own answer is passed through
when none is left. A request for a stored response goes to the node holding it and only
there; the id of a response a node creates is recorded with the lease's release.

For a streaming answer the first chunk is read before the client sees the status line, so
a node that sends headers and then dies is still failed over. A whole (non-streamed)
answer is read within ``max_response_bytes`` and ``response_body_timeout_s``; a stream's
chunks may be at most ``idle_timeout_s`` apart. Only allow-listed headers reach the client
(``node_headers.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from llm_router.deadline import Deadline
from llm_router.errors import (
    GatewayTimeout,
    NoCapableNodes,
    NotImplementedByFleet,
    RouterError,
    UpstreamError,
)
from llm_router.observability.observer import Observer, RequestTrace
from llm_router.routing.affinity import AFFINITY_HEADER
from llm_router.routing.attempts import (
    AttemptFailed,
    Verdict,
    bad_answer,
    connection_failure,
    request_digest,
)
from llm_router.routing.endpoints import Dialect, Endpoint
from llm_router.routing.hop_client import HopClient, HopError, HopResponse
from llm_router.routing.node_headers import SSE, media_type, passed_headers
from llm_router.routing.response_ids import StreamIdFinder, id_of_object
from llm_router.routing.select import Dispatcher, Lease, Want
from llm_router.state.scripts import NO_AFFINITY, Affinity, Ending, FailureReport
from llm_router.tenancy import DEFAULT_TENANCY, Tenancy

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
    response_body_timeout_s: float = 30.0
    max_response_bytes: int = 64 * 1024 * 1024
    exclusion_failures: int = 3
    exclusion_window_ms: int = 30_000
    #: For https nodes: the CA store to verify them and the client certificate, if any.
    node_ssl: ssl.SSLContext | None = None


# Read-only like ``Call``, and not frozen for the same reason.
@dataclass(slots=True)
class ProxyReply:
    """What goes back to the client: a whole body, or SSE chunks to relay as they come.

    Iterating ``chunks`` to the end (or closing it) releases the node's lease.
    """

    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: AsyncGenerator[bytes, None] | None = None


# Not frozen: one is made per request, and a frozen dataclass sets each field through
# ``object.__setattr__`` (measured: 3-4x the cost of a plain one). Treat it as read-only.
@dataclass(slots=True)
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
    tenancy: Tenancy = DEFAULT_TENANCY  # its place in the fleet-wide queue


@dataclass
class _Evidence:
    """What one request has said against the nodes it was tried on."""

    target: str
    body: bytes
    tried: list[str]
    answers_failed: int = 0
    #: The node on which this request's failure currently counts as evidence.
    standing: str = ""
    _digest: str = ""

    @property
    def digest(self) -> str:
        if not self._digest:  # only failed requests pay for hashing their body
            self._digest = request_digest(self.target, self.body)
        return self._digest


class Proxy:
    def __init__(self, dispatcher: Dispatcher, config: ProxyConfig, observer: Observer) -> None:
        self._dispatcher = dispatcher
        self._config = config
        self._observer = observer
        self._client: HopClient | None = None

    async def start(self) -> None:
        self._client = HopClient(
            connect_timeout_s=self._config.connect_timeout_s,
            idle_timeout_s=self._config.idle_timeout_s,
            ssl_context=self._config.node_ssl,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

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
        assert self._client is not None, "Proxy.start() was not awaited"
        headers = call.headers
        out_headers = {h: headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in headers}
        out_headers["x-request-id"] = call.request_id
        want = _want_of(call)
        # Made at the first failure: a request answered at once never needs one.
        evidence: _Evidence | None = None
        last_error: RouterError | None = None
        # A node's own answer (busy, or "does not do that"), passed on if nobody else can.
        own_answer: tuple[int, bytes, dict[str, str]] | None = None
        try:
            for _attempt in range(self._config.max_attempts):
                if evidence is not None and evidence.tried:
                    want = dataclasses.replace(want, avoid=tuple(evidence.tried))
                try:
                    lease = await self._dispatcher.acquire(
                        call.model, client_gone, want, call.affinity, call.tenancy
                    )
                except (NoCapableNodes, NotImplementedByFleet):
                    if own_answer is None and last_error is None:
                        raise
                    break  # every other node is excluded, declined, busy elsewhere or gone
                self._observer.leased(
                    trace,
                    lease.node_id,
                    lease.queued_ms,
                    lease.affinity,
                    (lease.tenant, lease.band),
                )
                self._observer.propagate(trace, out_headers)
                try:
                    reply = await self._attempt(lease, call, out_headers, trace)
                    if 400 <= reply.status < 500:
                        # Another node calls the request itself bad: so was its failure.
                        await self._withdraw(call.model, evidence)
                    return reply
                except AttemptFailed as failed:
                    last_error = failed.error
                    if isinstance(failed.error, _NodeAnswer):
                        own_answer = failed.error.response
                    if evidence is None:
                        evidence = _Evidence(call.target, call.body, tried=[])
                    excluded = await self._report(lease, call, failed, evidence)
                    self._observer.failed_attempt(trace, excluded=excluded)
                    log.info(
                        "attempt on node %s failed for %s (%s%s): %s",
                        lease.node_id,
                        call.model,
                        failed.verdict.value,
                        ", excluded" if excluded else "",
                        failed.detail,
                    )
                except BaseException:
                    # Cancelled (client gone) or a bug: free the slot without awaiting anything.
                    self._dispatcher.release_soon(lease)
                    raise
        except BaseException:
            await self._withdraw(call.model, evidence)
            raise
        await self._withdraw(call.model, evidence)
        if own_answer is not None:
            status, content, resp_headers = own_answer
            return ProxyReply(status, resp_headers, content)
        assert last_error is not None
        raise last_error

    async def _report(
        self, lease: Lease, call: Call, failed: AttemptFailed, evidence: _Evidence
    ) -> bool:
        """Release a failed attempt's lease with what the failure says about its node."""
        config = self._config
        if failed.verdict is Verdict.STALE_SECRET:
            await self._dispatcher.release(lease)
            return False
        if failed.declined:
            await self._dispatcher.release(
                lease,
                Ending(
                    lease.node_id,
                    lease.lease_id,
                    cooldown_ms=config.exclusion_cooldown_ms,
                    refused_family=call.endpoint.family,
                ),
            )
            return False
        evidence.tried.append(lease.node_id)
        report = FailureReport(
            model=call.model,
            exclude_now=failed.verdict is not Verdict.ANSWER,
            cooldown_ms=(
                min(_BUSY_COOLDOWN_MS, config.exclusion_cooldown_ms)
                if failed.verdict is Verdict.BUSY
                else config.exclusion_cooldown_ms
            ),
            failures_to_exclude=config.exclusion_failures,
            window_ms=config.exclusion_window_ms,
        )
        if failed.verdict is Verdict.ANSWER:
            evidence.answers_failed += 1
            # A request answered badly by two nodes is suspect itself: it withdraws what its
            # first failure said and says nothing against the second node.
            report = dataclasses.replace(
                report,
                digest=evidence.digest,
                counts=evidence.answers_failed == 1,
                withdraw_from=evidence.standing,
            )
            evidence.standing = lease.node_id if evidence.answers_failed == 1 else ""
        return await self._dispatcher.release_failed(lease, report)

    async def _withdraw(self, model: str, evidence: _Evidence | None) -> None:
        """The request failed everywhere it went: its failure was the request's problem."""
        if evidence is not None and evidence.standing:
            report = FailureReport(
                model=model,
                exclude_now=False,
                cooldown_ms=0,
                digest=evidence.digest,
                withdraw_from=evidence.standing,
            )
            evidence.standing = ""
            await asyncio.shield(self._dispatcher.release_failed(None, report))

    async def _attempt(
        self, lease: Lease, call: Call, headers: dict[str, str], trace: RequestTrace
    ) -> ProxyReply:
        client = self._client
        assert client is not None
        method = call.endpoint.method
        node = lease.node_id
        deadline = Deadline()
        trace.sending()
        try:
            with deadline.within(self._config.first_byte_timeout_s):
                upstream = await client.request(
                    method, lease.url, call.target, call.body, {**headers, **lease.node_headers}
                )
        except TimeoutError as exc:
            raise AttemptFailed(
                GatewayTimeout(f"node {node} did not answer in time"), Verdict.ANSWER
            ) from exc
        except HopError as exc:
            raise connection_failure(node, exc) from exc

        response_headers = self._response_headers(upstream, lease, call.request_id)
        status = upstream.status
        if 300 <= status < 400 or (status >= 500 and status not in _DECLINED):
            upstream.release()
            what = "answered with a redirect" if status < 400 else "failed"
            raise bad_answer(node, f"{what} ({status})")
        if status == 429:
            content = await self._read_whole(upstream, node, deadline)
            raise AttemptFailed(
                _NodeAnswer((status, content, response_headers), "every capable node is busy"),
                Verdict.BUSY,
            )
        if status == 401:
            # The client's credential never reaches a node, so a node's 401 is about ours.
            upstream.release()
            raise AttemptFailed(
                UpstreamError(f"node {node} refused the router's node secret"),
                Verdict.STALE_SECRET,
            )
        if status in _DECLINED:
            content = await self._read_whole(upstream, node, deadline)
            # A stored response has no other node to try: its node's answer is final.
            if not call.response_id and declines_endpoint(status, content):
                raise AttemptFailed(
                    _NodeAnswer(
                        (status, content, response_headers),
                        f"node {node} does not serve {call.endpoint.path}",
                    ),
                    Verdict.ANSWER,
                    declined=True,
                )
            return self._answered(lease, trace, status, response_headers, content)
        media = media_type(upstream.headers.get("content-type"))
        if not call.endpoint.may_answer(status, media):
            upstream.release()
            raise bad_answer(
                node, f"answered {call.endpoint.path} with a disallowed content type ({media})"
            )

        if media != SSE:
            content = await self._read_whole(upstream, node, deadline)
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
            with deadline.within(self._config.first_byte_timeout_s):
                first = await upstream.readany()
        except (HopError, TimeoutError) as exc:
            upstream.release()
            raise bad_answer(node, "failed before streaming", repr(exc)) from exc
        if not first:
            upstream.release()
            raise bad_answer(node, "closed an empty stream")
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
        upstream: HopResponse,
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
            async for chunk in upstream:
                if finder is not None and not finder.found:
                    finder.feed(chunk)
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            # Closed or cancelled before the node ended the stream: the client left.
            closed = True
            raise
        except (HopError, TimeoutError) as exc:
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

    async def _read_whole(self, upstream: HopResponse, node: str, deadline: Deadline) -> bytes:
        """The body of a non-streamed answer, within the size and time bounds."""
        limit = self._config.max_response_bytes
        try:
            if upstream.content_length is not None and upstream.content_length > limit:
                raise bad_answer(node, f"sent an answer larger than {limit} bytes")
            chunks: list[bytes] = []
            size = 0
            with deadline.within(self._config.response_body_timeout_s):
                async for chunk in upstream:
                    size += len(chunk)
                    if size > limit:
                        raise bad_answer(node, f"sent an answer larger than {limit} bytes")
                    chunks.append(chunk)
            return b"".join(chunks)
        except TimeoutError as exc:
            raise AttemptFailed(
                GatewayTimeout(f"node {node} did not finish its answer in time"), Verdict.ANSWER
            ) from exc
        except HopError as exc:
            raise bad_answer(node, "failed mid-response", f"{type(exc).__name__}: {exc}") from exc
        finally:
            upstream.release()

    @staticmethod
    def _response_headers(upstream: HopResponse, lease: Lease, request_id: str) -> dict[str, str]:
        headers = passed_headers(upstream.headers)
        content_type = upstream.headers.get("content-type")
        if content_type:
            headers["content-type"] = content_type
        headers["x-content-type-options"] = "nosniff"
        headers["x-llm-router-node"] = lease.node_id
        headers["x-request-id"] = request_id
        if lease.queued_ms is not None:
            headers["x-queue-status"] = "queued"
            headers["x-queue-wait-ms"] = str(round(lease.queued_ms))
            headers["x-queue-band"] = str(lease.band)
            if lease.queue_position:  # 0: it waited on its key's limit, not in the queue
                headers["x-queue-position"] = str(lease.queue_position)
        if lease.affinity:
            # "moved:full" → "moved": the cause is for operators (decisions, metrics).
            headers[AFFINITY_HEADER] = lease.affinity.partition(":")[0]
        return headers


#: The ``Want`` of a request that names no stored response, one per endpoint family: the
#: same few values on every request, so made once each.
_WANTS: dict[str, Want] = {}


def _want_of(call: Call) -> Want:
    if call.response_id:
        return Want(family=call.endpoint.family, response_id=call.response_id)
    want = _WANTS.get(call.endpoint.family)
    if want is None:
        want = _WANTS[call.endpoint.family] = Want(family=call.endpoint.family)
    return want


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
