"""Latency histograms small enough to sum across replicas: geometric buckets, four per
doubling from 1 ms, so a quantile read back from merged counts is off by less than one
bucket (a factor of 1.19), and by a few per cent for smooth distributions.

A bucket is an integer index; a histogram is a sparse ``index → count`` map, so a replica
that saw a few distinct latencies writes a few fields, whatever the range of the scale.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping

STEPS_PER_DOUBLING = 4
#: Index of the last bucket: 2**(80/4) ms ≈ 17 min, beyond any request the router serves.
TOP_INDEX = 80


def upper_ms(index: int) -> float:
    return float(2.0 ** (index / STEPS_PER_DOUBLING))


# Upper bounds in seconds; the last bucket takes everything above its bound too.
_UPPER_S = [upper_ms(i) / 1000.0 for i in range(TOP_INDEX)]


def bucket_of(seconds: float) -> int:
    """The bucket holding ``seconds``: index ``i`` covers (upper(i-1), upper(i)] ms.
    A bisection (C code) rather than a logarithm: it runs once per request."""
    return bisect_left(_UPPER_S, seconds)


def quantile_ms(counts: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, interpolated geometrically inside its
    bucket (linearly in the first, which starts at 0); None for an empty histogram."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        n = counts[index]
        if n <= 0:
            continue
        if seen + n >= rank:
            fraction = (rank - seen) / n
            upper = upper_ms(index)
            if index == 0:
                return round(upper * fraction, 2)
            lower = upper_ms(index - 1)
            return round(lower * float((upper / lower) ** fraction), 2)
        seen += n
    return round(upper_ms(max(counts)), 2)
