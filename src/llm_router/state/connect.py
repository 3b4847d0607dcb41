"""Open the fleet's state store from a URL.

    redis://[user:pass@]host:port/db       plain Redis or Valkey
    rediss://...                           the same over TLS
    unix:///path/to/redis.sock?db=0        a local socket
    redis+sentinel://[pass@]h1:26379,h2:26379/service[/db]
                                           the current primary of a Sentinel-managed set
    redis+cluster://h1:7000[,h2:7001]      Redis Cluster (every key shares the fleet's hash tag)
    rediss+sentinel://..., rediss+cluster://...
                                           the same over TLS, to the sentinels and every node
    (none)                                 the embedded in-process store: fakeredis running
                                           the same Lua scripts; one replica only

Every command has a socket timeout, so an unreachable store surfaces as an error within
that bound (the API turns it into 503 ``state_store_unavailable``) instead of a hang.
"""

from __future__ import annotations

import inspect
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis as PlainRedis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import RedisSSLContext, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from llm_router.state.multiplex import Address, Handshake, Locate, MultiplexedRedis, fixed

log = logging.getLogger(__name__)


#: How often a replica asks the sentinels, beside its calls, whether the primary moved.
SENTINEL_RECHECK_S = 1.0


class StoreUrlError(ValueError):
    """The store URL cannot be used; the message says why."""


@dataclass
class Store:
    """A command client plus what is needed for pub/sub on the same deployment."""

    redis: Any
    embedded: bool
    description: str
    _pubsub_client: Any = field(default=None, repr=False)
    #: The lean shared connection for the request path's scripts (every store but embedded).
    fast: MultiplexedRedis | None = field(default=None, repr=False)

    def pubsub_client(self) -> Any:
        """A client whose ``pubsub()`` reaches the fleet's channel (cluster: any node)."""
        return self._pubsub_client or self.redis

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()
        if self._pubsub_client is not None and self._pubsub_client is not self.redis:
            await self._pubsub_client.aclose()
        await self.redis.aclose()


def _client_options(timeout_s: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        # One quick retry rides over a dropped idle connection (a restarted or failed-over
        # Redis). Timeouts are not retried: a frozen store answers 503 after one socket
        # timeout, not several.
        "retry": Retry(
            ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=(RedisConnectionError,)
        ),
    }


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            hosts.append((host or part, int(port) if port else default_port))
        except ValueError as exc:
            raise StoreUrlError(f"bad port in store URL host {part!r}") from exc
    return hosts


def open_store(url: str | None, *, timeout_s: float = 2.0) -> Store:
    if not url:
        return _embedded()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise StoreUrlError(
            f"unsupported store URL scheme {scheme or redact_url(url)!r}: use redis://, "
            "rediss://, unix://, redis+sentinel://, redis+cluster:// (or rediss+sentinel://, "
            "rediss+cluster:// for TLS)"
        )
    return opener(url, timeout_s)


#: The ``ssl_*`` URL options, as redis-py names them without the prefix.
_TLS_OPTIONS = frozenset(inspect.signature(RedisSSLContext).parameters)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The context redis-py would build from the URL's ``ssl_*`` options, with its defaults
    (certificate required, host name checked)."""
    tls = {k.removeprefix("ssl_"): v for k, v in options.items() if k.startswith("ssl_")}
    unknown = sorted(f"ssl_{k}" for k in tls if k not in _TLS_OPTIONS)
    if unknown:
        raise StoreUrlError(f"unknown TLS option in store URL: {', '.join(unknown)}")
    tls.setdefault("cert_reqs", "required")
    tls.setdefault("check_hostname", True)
    try:
        return RedisSSLContext(**tls).get()
    except (ssl.SSLError, OSError, ValueError, RedisError) as exc:
        raise StoreUrlError(f"TLS options in store URL cannot be used: {exc}") from exc


#: The TLS keyword arguments each redis-py client takes (Cluster takes fewer than the rest).
_CLIENT_TLS = frozenset(p for p in inspect.signature(PlainRedis).parameters if p.startswith("ssl"))
_CLUSTER_TLS = frozenset(
    p for p in inspect.signature(RedisCluster).parameters if p.startswith("ssl")
)


def _tls(
    scheme: str, query: str, accepted: frozenset[str]
) -> tuple[ssl.SSLContext | None, dict[str, Any]]:
    """For a Sentinel or Cluster URL: the shared link's SSL context and the keyword
    arguments that give redis-py's clients the same options and defaults, or no TLS.

    The options are parsed as redis-py parses a ``rediss://`` URL's, so one spelling works
    on every store kind.
    """
    try:
        parsed = parse_url(f"rediss://localhost/?{query}")
    except ValueError as exc:
        raise StoreUrlError(f"bad option in store URL: {exc}") from exc
    options = {k: v for k, v in parsed.items() if k.startswith("ssl_")}
    if not scheme.startswith("rediss"):
        if options:
            raise StoreUrlError(
                f"TLS options in a {scheme}:// URL ({', '.join(sorted(options))}): "
                f"use {scheme.replace('redis', 'rediss', 1)}://"
            )
        return None, {}
    context = _tls_context(options)  # names and values checked here
    unsupported = sorted(set(options) - accepted)
    if unsupported:
        raise StoreUrlError(f"TLS option not supported on {scheme}://: {', '.join(unsupported)}")
    return context, {
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        **options,
    }


def _single(url: str, timeout_s: float) -> Store:
    scheme = url.split("://", 1)[0].lower()
    plain_url = url.replace("valkey", "redis", 1) if scheme.startswith("valkey") else url
    client = PlainRedis.from_url(plain_url, **_client_options(timeout_s))
    options: dict[str, Any] = dict(parse_url(plain_url))
    path = options.get("path")
    address = (
        Address(path=path)
        if path
        else Address(options.get("host", "127.0.0.1"), int(options.get("port", 6379)))
    )
    handshake = Handshake(
        username=options.get("username"),
        password=options.get("password"),
        db=int(options.get("db") or 0),
        ssl_context=_tls_context(options) if scheme in ("rediss", "valkeys") else None,
    )
    fast = MultiplexedRedis(fixed(address), handshake, timeout_s)
    return Store(client, embedded=False, description=redact_url(url), fast=fast)


def _embedded() -> Store:
    import fakeredis  # imported lazily: a production replica never needs it

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return Store(client, embedded=True, description="embedded in-process store")


def _sentinel(url: str, timeout_s: float) -> Store:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    password = unquote(parts.password) if parts.password else None
    tls, tls_options = _tls(parts.scheme.lower(), parts.query, _CLIENT_TLS)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise StoreUrlError("redis+sentinel:// URL needs the service name: .../mymaster[/db]")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    options = _client_options(timeout_s)
    # The sentinels and the data nodes speak TLS alike: one set of options for both.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        _hosts(netloc, 26379),
        sentinel_kwargs={
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            **tls_options,
        },
        **options,
        **tls_options,
    )
    client = sentinel.master_for(service, db=db, password=password, **options)

    async def primary() -> list[Address]:
        # Asked on every (re)connect, so a failover is followed by reconnecting.
        host, port = await sentinel.discover_master(service)
        return [Address(host, int(port))]

    handshake = Handshake(password=password, db=db, ssl_context=tls)
    fast = MultiplexedRedis(primary, handshake, timeout_s, recheck_s=SENTINEL_RECHECK_S)
    kind = "sentinel" if tls is None else "TLS sentinel"
    return Store(client, embedded=False, description=f"{kind} service {service!r}", fast=fast)


def _cluster(url: str, timeout_s: float) -> Store:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    password = unquote(parts.password) if parts.password else None
    query = parse_qs(parts.query)
    tls, tls_options = _tls(parts.scheme.lower(), parts.query, _CLUSTER_TLS)
    nodes = [ClusterNode(h, p) for h, p in _hosts(netloc, 6379)]
    options = {**_client_options(timeout_s), **tls_options}
    client = RedisCluster(
        startup_nodes=nodes,
        password=password,
        require_full_coverage="require_full_coverage" in query,
        **options,
    )
    # Cluster PUBLISH reaches every node, so one plain connection to a seed node is enough
    # to hear the fleet's events.
    first_host, first_port = _hosts(netloc, 6379)[0]
    sub = PlainRedis(host=first_host, port=first_port, password=password, **options)
    # The seeds are where a link starts; MOVED then points it at the fleet's slot owner.
    seeds: Locate = fixed(*(Address(h, p) for h, p in _hosts(netloc, 6379)))
    fast = MultiplexedRedis(seeds, Handshake(password=password, ssl_context=tls), timeout_s)
    return Store(client, embedded=False, description=redact_url(url), _pubsub_client=sub, fast=fast)


_OPENERS: dict[str, Callable[[str, float], Store]] = {
    "redis": _single,
    "rediss": _single,
    "unix": _single,
    "valkey": _single,
    "valkeys": _single,
    "redis+sentinel": _sentinel,
    "redis+cluster": _cluster,
    "rediss+sentinel": _sentinel,
    "rediss+cluster": _cluster,
}


#: Query parameters shown as given; every other one (password, username, ssl_password, a
#: credential redis-py may learn to accept tomorrow...) is shown as ``***``. An allow-list,
#: because a deny-list leaks the first credential nobody thought of.
_PLAIN_QUERY = frozenset(
    {
        "db",
        "protocol",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "require_full_coverage",
        "decode_responses",
    }
)


def redact_url(url: str) -> str:
    """The store URL with every credential replaced by ``***``: the user-info part (user,
    password, or a bare Sentinel password) and any query value not known to be harmless.

    Works on the raw text rather than ``urlsplit``'s fields, which misread multi-host and
    password-only netlocs; anything unparseable is shown as its scheme alone.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    rest, _, _fragment = rest.partition("#")
    location, qmark, query = rest.partition("?")
    netloc, slash, path = location.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    shown = f"{scheme}://{netloc}{slash}{path}"
    if not qmark:
        return shown
    pairs = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        pairs.append(pair if unquote(name).lower() in _PLAIN_QUERY or not eq else f"{name}=***")
    return shown + "?" + "&".join(pairs)
