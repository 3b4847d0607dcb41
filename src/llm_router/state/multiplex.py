"""A lean Redis connection for the request path: one socket shared by every request.

redis-py checks a connection out of a pool, packs, sends, reads and checks it back in for
every call; on the proxy's hot path that costs 135-195 µs of CPU per script call on our
machines. Here all of a replica's ``EVALSHA`` calls share one connection: commands issued
in the same event-loop turn go out in one write, and replies are matched to callers in
order (Redis answers one connection's commands in order). The same call costs 44-82 µs.

Every store kind gets it: where the link goes is asked of a ``Locate`` function each time
a link is opened (a fixed address; the primary Sentinel names now; a Cluster's seed nodes),
so a failover is followed by simply reconnecting. On Cluster the fleet lives in one hash
slot, so one link reaches it; ``MOVED`` re-points the link at the slot's new owner and
``ASK`` sends that one call, after ``ASKING``, to the importing node. TLS wraps the same
socket.

Any connection error or timeout fails the calls in flight on that link (they surface as
``StateStoreUnavailable``) and the next call reconnects: a reply that arrives after its
caller timed out could otherwise be matched to the wrong caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import hiredis
from redis import exceptions as redis_errors

from llm_router.deadline import Deadline

log = logging.getLogger(__name__)

CLIENT_NAME = "llm-router-request-path"
#: How many MOVED/ASK hops one call follows before giving up (a slot moving in a loop).
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Address:
    host: str = "127.0.0.1"
    port: int = 6379
    #: A unix socket path; host and port are then unused.
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """``host:port`` as a MOVED/ASK reply gives it (the host may be an IPv6 literal)."""
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True)
class Handshake:
    """What every new link sends or wraps before its first call."""

    username: str | None = None
    password: str | None = None
    db: int = 0
    ssl_context: ssl.SSLContext | None = None
    #: Shown by ``CLIENT LIST``, so an operator can tell the request path's link apart.
    client_name: str = CLIENT_NAME


#: Where a new link may go, best first (called each time one is opened).
Locate = Callable[[], Awaitable[list[Address]]]


def fixed(*addresses: Address) -> Locate:
    async def locate() -> list[Address]:
        return list(addresses)

    return locate


#: Reply errors that mean "the store is not usable right now", as redis-py names them.
_REPLY_ERRORS: dict[str, type[redis_errors.RedisError]] = {
    "NOSCRIPT": redis_errors.NoScriptError,
    "READONLY": redis_errors.ReadOnlyError,
    "LOADING": redis_errors.BusyLoadingError,
    "CLUSTERDOWN": redis_errors.ClusterDownError,
    "TRYAGAIN": redis_errors.TryAgainError,
    "MASTERDOWN": redis_errors.MasterDownError,
}
#: A node that answers these is no longer the fleet's primary: stop sending it new calls.
_STALE_NODE = frozenset({"READONLY", "MASTERDOWN"})


def _pack_slow(args: tuple[bytes | str | int | float, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _pack(args: tuple[bytes | str | int | float, ...]) -> bytes:
    # hiredis encodes in C (about half the CPU of the loop above for a script call's ~20
    # arguments); it refuses what is not str, int, float or bytes (a bool), which the
    # loop spells as Python does.
    try:
        return hiredis.pack_command(args)  # type: ignore[arg-type,no-any-return]
    except TypeError:
        return _pack_slow(args)


class _Link(asyncio.Protocol):
    """One connection: writes batched per loop turn, replies handed out in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.closed = asyncio.get_running_loop().create_future()
        self._reader = hiredis.Reader()
        self._outbox: list[bytes] = []
        self._retiring = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                break
            if self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
        if self._retiring and not self.waiting:
            self.fail(redis_errors.ConnectionError("link retired"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis_errors.ConnectionError(f"connection to the state store lost: {exc}"))

    @property
    def usable(self) -> bool:
        return not self.closed.done() and not self._retiring

    def retire(self) -> None:
        """Take no new calls; close once the replies still owed have arrived."""
        self._retiring = True
        if not self.waiting:
            self.fail(redis_errors.ConnectionError("link retired"))

    def fail(self, error: Exception) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def send(self, *args: bytes | str | int | float) -> asyncio.Future[Any]:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed.done():  # nobody would ever answer it
            waiter.set_exception(redis_errors.ConnectionError("state store link closed"))
            return waiter
        self.waiting.append(waiter)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(_pack(args))
        return waiter

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._outbox))
        self._outbox.clear()


def _error_kind(reply: Any) -> str | None:
    if isinstance(reply, hiredis.ReplyError):
        return str(reply).split(" ", 1)[0]
    return None


class MultiplexedRedis:
    def __init__(
        self,
        locate: Locate,
        handshake: Handshake,
        timeout_s: float,
        *,
        recheck_s: float | None = None,
    ) -> None:
        self._locate = locate
        self._handshake = handshake
        self._timeout_s = timeout_s
        #: Ask ``locate`` again this often while calls flow, off the calls' path: a
        #: Sentinel failover with the old primary still up leaves a healthy link to it.
        self._recheck_s = recheck_s
        self._next_check = 0.0
        self._checking: asyncio.Task[None] | None = None
        #: Open links by address: the current one, plus any an ASK sent a call to.
        self._links: dict[Address, _Link] = {}
        self._current: Address | None = None
        #: The slot owner a MOVED named: tried before the located addresses.
        self._moved_to: Address | None = None
        self._opening: dict[Address, asyncio.Future[_Link]] = {}
        self._connecting = asyncio.Lock()

    async def _open(self, address: Address) -> _Link:
        # Bounded on its own: it is shared, so no single caller's timeout cancels it.
        async with asyncio.timeout(self._timeout_s):
            return await self._open_now(address)

    async def _open_now(self, address: Address) -> _Link:
        loop = asyncio.get_running_loop()
        tls = self._handshake.ssl_context
        if address.path is not None:
            _, link = await loop.create_unix_connection(_Link, address.path)
        else:
            _, link = await loop.create_connection(
                _Link,
                address.host,
                address.port,
                ssl=tls,
                server_hostname=address.host if tls is not None else None,
            )
        try:
            await self._greet(link)
        except BaseException:
            link.fail(redis_errors.ConnectionError("state store handshake failed"))
            raise
        self._links[address] = link
        return link

    async def _greet(self, link: _Link) -> None:
        hs = self._handshake
        try:
            if hs.password:
                auth = ("AUTH", hs.username, hs.password) if hs.username else ("AUTH", hs.password)
                self._check(await link.send(*auth))
            if hs.db:
                self._check(await link.send("SELECT", hs.db))
            self._check(await link.send("CLIENT", "SETNAME", hs.client_name))
        except redis_errors.ResponseError as exc:
            raise redis_errors.ConnectionError(f"state store refused the handshake: {exc}") from exc

    async def _link_to(self, address: Address) -> _Link:
        link = self._links.get(address)
        if link is not None and link.usable:
            return link
        # Callers redirected together share one new link rather than opening one each.
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(self._open(address))
            self._opening[address] = opening
            opening.add_done_callback(lambda done: self._opened(address, done))
        return await asyncio.shield(opening)

    def _opened(self, address: Address, done: asyncio.Future[_Link]) -> None:
        self._opening.pop(address, None)
        # Read here: when every caller gave up first, no one else ever reads it.
        if not done.cancelled():
            done.exception()

    async def _connected(self) -> _Link:
        current = self._current
        if current is not None and (link := self._links.get(current)) and link.usable:
            return link
        async with self._connecting:
            current = self._current
            if current is not None and (link := self._links.get(current)) and link.usable:
                return link
            candidates = [self._moved_to] if self._moved_to else []
            candidates += [a for a in await self._locate() if a not in candidates]
            error: BaseException | None = None
            for address in candidates:
                try:
                    link = await self._link_to(address)
                except (OSError, redis_errors.ConnectionError) as exc:
                    error = exc
                    if address == self._moved_to:
                        self._moved_to = None  # the owner is gone: ask the seeds again
                    continue
                self._current = address
                return link
            raise redis_errors.ConnectionError(f"no state store node reachable: {error}")

    @staticmethod
    def _check(reply: Any) -> Any:
        kind = _error_kind(reply)
        if kind is not None:
            raise _REPLY_ERRORS.get(kind, redis_errors.ResponseError)(str(reply))
        return reply

    def _maybe_recheck(self) -> None:
        if self._recheck_s is None or self._checking is not None:
            return
        now = asyncio.get_running_loop().time()
        if now >= self._next_check:
            self._next_check = now + self._recheck_s
            self._checking = asyncio.create_task(self._recheck())

    async def _recheck(self) -> None:
        try:
            current = self._current
            async with asyncio.timeout(self._timeout_s):
                located = await self._locate()
            if current is not None and current == self._current and current not in located:
                if (link := self._links.get(current)) is not None:
                    link.retire()
                self._current = None
        except Exception as exc:  # a failed check changes nothing; calls still reconnect
            log.debug("state store primary check failed: %s", exc)
        finally:
            self._checking = None

    async def evalsha(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        return await self._script(("EVALSHA", sha, len(keys), *keys, *args))

    async def fcall(self, function: str, keys: list[str], args: list[Any]) -> Any:
        return await self._script(("FCALL", function, len(keys), *keys, *args))

    async def function_load(self, source: str) -> Any:
        """Load a function library on the node this connection talks to (the one owning the
        fleet's slot once a call has been redirected there)."""
        return await self._script(("FUNCTION", "LOAD", source))

    async def _script(self, command: tuple[Any, ...]) -> Any:
        self._maybe_recheck()
        link: _Link | None = None
        #: The link whose reply this call is waiting for, if any: a timeout fails only it.
        owed: _Link | None = None
        try:
            # A Deadline rather than asyncio.timeout: the same semantics at about half the
            # CPU, and this runs for every script call of every request.
            with Deadline().within(self._timeout_s):
                link = await self._connected()
                # A caller cancelled meanwhile leaves its (done) future in the queue, so
                # the replies stay in step: its reply is read and dropped.
                owed = link
                reply = await link.send(*command)
                owed = None
                for _ in range(MAX_REDIRECTS):
                    kind = _error_kind(reply)
                    if kind == "MOVED":
                        link = await self._follow_moved(link, reply)
                        owed = link
                        reply = await link.send(*command)
                    elif kind == "ASK":
                        link = await self._link_to(Address.parse(str(reply).split()[2]))
                        owed = link
                        asking = link.send("ASKING")
                        reply = await link.send(*command)
                        self._check(await asking)
                    else:
                        break
                    owed = None
        except TimeoutError:
            # Replies may now be out of step with the callers waiting: start over.
            if owed is not None:
                owed.fail(TimeoutError("state store timed out"))
            raise
        if _error_kind(reply) in _STALE_NODE and link is not None:
            link.retire()
            if self._current is not None and self._links.get(self._current) is link:
                self._current = self._moved_to = None
        return self._check(reply)

    async def _follow_moved(self, old: _Link, reply: Any) -> _Link:
        owner = Address.parse(str(reply).split()[2])
        self._moved_to = owner
        link = await self._link_to(owner)
        self._current = owner
        if link is not old:
            old.retire()
        return link

    async def close(self) -> None:
        pending: list[asyncio.Future[Any]] = [*self._opening.values()]
        if self._checking is not None:
            pending.append(self._checking)
        for task in pending:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        links, self._links, self._current = list(self._links.values()), {}, None
        for link in links:
            link.fail(redis_errors.ConnectionError("closed"))
            with contextlib.suppress(Exception):
                await link.closed
