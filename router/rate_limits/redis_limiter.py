"""The shared rate limiter: GCRA (see ``limiter``) in one Lua script, so replicas check and take
every bucket of a request atomically.

Why a script of our own rather than the ``limits`` package: ``limits`` checks one limit per call,
so a request under four limits (key and tenant, requests and tokens) would take some and be refused
by another, and it has no way to give back part of a cost (the token estimate corrected after the
call). GCRA needs one value per bucket (its TAT, in ms), so the script is short: read every bucket,
refuse with the longest wait if any is over, else write them all. Time is Redis's own (``TIME``),
one clock for every replica, unless the caller passes one (tests freeze it). The keys of one
request share a hash tag per tenant, so one script may touch them all in a Redis Cluster too, and
expire once their bucket is empty again.

The client makes no retries and has short socket timeouts: an unreachable Redis costs a request at
most one timeout before the gate's fail mode decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tierwise.router.rate_limits.limiter import (
    PERIOD_S,
    Admitted,
    Charge,
    RateLimitStoreUnavailable,
    Refusal,
)

# Both scripts start here: ARGV[1] is now in ms, or '' for Redis's own clock (TIME).
_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
else
  now = tonumber(ARGV[1])
end
"""

# KEYS: the buckets. ARGV[1]: now in ms ('' = Redis TIME), ARGV[2]: the period in ms, then each
# bucket's cost in ms (cost x emission interval). Returns {index refused, wait in ms} or {0, the
# buckets' new TATs in ms}.
_ACQUIRE = (
    _NOW
    + """
local period = tonumber(ARGV[2])
local tats, refused, wait = {}, 0, 0
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  tats[i] = tat + tonumber(ARGV[2 + i])
  local over = tats[i] - now - period
  if over > wait then refused, wait = i, over end
end
if refused > 0 then return {refused, string.format('%.3f', wait)} end
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = string.format('%.3f', tats[i])
  redis.call('SET', key, out[i], 'PX', math.ceil(tats[i] - now) + 1000)
end
return {0, table.concat(out, ' ')}
"""
)

# KEYS[1]: one bucket. ARGV[1]: now in ms ('' = Redis TIME), ARGV[2]: ms to add (negative: give
# back), ARGV[3]: the bucket's TAT when the request was admitted, ARGV[4]: its charge in ms. The
# same rule as ``limiter.gcra_adjust``: give back only the request's charge not yet drained.
_ADJUST = (
    _NOW
    + """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta, tat = tonumber(ARGV[2]), tonumber(ARGV[3])
local new
if delta >= 0 then
  new = math.max(current, now) + delta
else
  local undrained = math.max(0, tat - math.max(now, tat - tonumber(ARGV[4])))
  new = current - math.min(-delta, undrained)
end
if new <= now then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
return 1
"""
)


def bucket_key(charge: Charge) -> str:
    # The tenant's digest as the hash tag: a tenant name may hold braces.
    tag = hashlib.sha256(charge.tenant.encode()).hexdigest()[:16]
    return f"tierwise:ratelimit:{{{tag}}}:{charge.bucket}"


class RedisRateLimiter:
    def __init__(self, client: Redis, clock: Callable[[], float] | None = None) -> None:
        """``clock`` (seconds) replaces Redis's TIME; tests freeze it."""
        self._client = client
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)
        self._adjust = client.register_script(_ADJUST)

    @classmethod
    def from_url(
        cls, url: str, timeout_s: float, clock: Callable[[], float] | None = None
    ) -> RedisRateLimiter:
        client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        return cls(client, clock)

    def _now_ms(self) -> str:
        return "" if self._clock is None else f"{self._clock() * 1000:.3f}"

    async def acquire(self, charges: Sequence[Charge]) -> Refusal | Admitted:
        costs = [f"{c.cost * c.interval_s * 1000:.3f}" for c in charges]
        try:
            refused, answer = await self._acquire(
                keys=[bucket_key(c) for c in charges], args=[self._now_ms(), PERIOD_S * 1000, *costs]
            )
        except (RedisError, OSError) as exc:
            raise RateLimitStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if int(refused) == 0:
            return Admitted(tuple(float(tat) / 1000 for tat in answer.split()))
        return Refusal(charges[int(refused) - 1], float(answer) / 1000)

    async def adjust(self, charge: Charge, tokens: int, tat: float) -> None:
        interval_ms = charge.interval_s * 1000
        args = [
            self._now_ms(),
            f"{tokens * interval_ms:.3f}",
            f"{tat * 1000:.3f}",
            f"{charge.cost * interval_ms:.3f}",
        ]
        try:
            await self._adjust(keys=[bucket_key(charge)], args=args)
        except (RedisError, OSError) as exc:
            raise RateLimitStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
