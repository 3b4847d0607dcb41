"""Ids the request path mints: request ids, queue tickets, lease ids.

They only need to be unique (Redis keys them per lease and per ticket; a client reads its
request id in logs), not secret: nothing is granted to whoever knows one. ``uuid4`` asks the
kernel for 16 bytes and builds a ``UUID`` for each, three times per request; the process's
Mersenne Twister, seeded by the kernel at start and reseeded in every forked child, gives
128 bits in a fraction of that.
"""

from __future__ import annotations

from random import getrandbits


def new_id() -> str:
    """32 hex digits, like ``uuid4().hex``."""
    return f"{getrandbits(128):032x}"
