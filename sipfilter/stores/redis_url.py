"""`store.redis_url`: sipfilter's own query parameters, split from redis-py's and checked at config load.

No redis-py import here: the config loader and the CLI read URLs without loading the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

OURS = ("prefix", "cluster", "sentinel", "socket_timeout", "replicas")
DEFAULT_TIMEOUT_S = 0.3  # call-path commands (counters): fail fast, on_store_error decides
_TRUE = ("1", "true", "yes")


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """What sipfilter reads from the URL's query; everything else is redis-py's."""

    prefix: str = "sipfilter:"
    cluster: bool = False
    sentinel: str | None = None  # the Sentinel service name: the host part lists Sentinels
    socket_timeout: float | None = None  # seconds, call-path commands; None: the caller's default
    replicas: int = 0  # WAIT for this many replicas to acknowledge each batch of attempts


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Our query parameters (OURS) out of the URL; redis-py's stay."""
    base, _, query = url.partition("?")  # not urlunsplit: it would turn unix:///path into unix:/path
    ours, theirs = {}, []
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k in OURS:
            ours[k] = v
        else:
            theirs.append((k, v))
    return (base + "?" + urlencode(theirs) if theirs else base), ours


def redis_options(url: str) -> RedisOptions:
    """The URL's sipfilter options; ValueError naming the parameter when one is malformed."""
    _, ours = split_url(url)
    timeout: float | None = None
    if "socket_timeout" in ours:
        try:
            timeout = float(ours["socket_timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 60:
            raise ValueError(f"socket_timeout={ours['socket_timeout']!r}: expected seconds, above 0 and at "
                             "most 60")
    replicas = ours.get("replicas", "0")
    if not replicas.isdigit() or int(replicas) > 16:
        raise ValueError(f"replicas={replicas!r}: expected a number of replicas from 0 to 16")
    cluster = ours.get("cluster", "").lower() in _TRUE
    sentinel = ours.get("sentinel")
    if sentinel is not None and not sentinel:
        raise ValueError("sentinel=: expected the Sentinel service name (sentinel monitor <name> …)")
    if cluster and sentinel is not None:
        raise ValueError("cluster=1 and sentinel= exclude each other")
    if cluster and int(replicas):
        # WAIT has no key: in a Cluster it would reach an arbitrary shard, not the one holding the attempt.
        raise ValueError("replicas= is not supported with cluster=1: WAIT cannot follow attempts to shards")
    return RedisOptions(ours.get("prefix", "sipfilter:"), cluster, sentinel, timeout, int(replicas))
