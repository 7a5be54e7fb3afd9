"""The shared budget store: Redis, one Lua script per operation, so replicas check and reserve atomically.

Each budget period has three keys: a hash of used and in-flight totals, a
hash of reservation id -> "usd_nanos:tokens", and a sorted set of reservation
expiry times; alerts marks live in a set. Every script first drops expired
reservations from the totals, so a crashed replica's in-flight amounts stop
counting after the reservation TTL. Keys carry a hash tag per tenant, so all
of one tenant's budgets sit in one Redis Cluster slot and one script can
reserve on all of them. Keys expire a while after their period ends
(a relative PEXPIRE, computed on the caller's clock).

Redis may lose a period's usage (restarted without persistence, keys evicted).
So the state hash carries a ``seeded`` mark, set by ``seed`` once the budget
manager has rebuilt the period's spend from the ledger; ``reserve`` reserves
nothing on a line without it and names the line instead. The mark lives in the
same hash as the totals, so whatever drops the totals drops the mark with them.

The client makes no retries of its own (the budget manager backs off
between attempts) and has short socket timeouts, so an unreachable Redis
costs a request at most one timeout before the manager's fail mode decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tierwise.router.budgets.errors import BudgetStoreUnavailable
from tierwise.router.budgets.store import Amount, BudgetLine, LineState, ReserveResult, SettleResult

_PURGE = """
local function sub(key, field, n)
  if n ~= '0' then redis.call('HINCRBY', key, field, '-' .. n) end
end
local function drop(state, res, exp, id)
  local v = redis.call('HGET', res, id)
  if v then
    local usd, tokens = string.match(v, '^(%d+):(%d+)$')
    sub(state, 'inflight_usd', usd)
    sub(state, 'inflight_tokens', tokens)
    redis.call('HDEL', res, id)
    redis.call('ZREM', exp, id)
  end
end
local function purge(state, res, exp, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now)) do
    drop(state, res, exp, id)
  end
end
local function read(state, out)
  local v = redis.call('HMGET', state, 'used_usd', 'used_tokens', 'inflight_usd', 'inflight_tokens')
  for j = 1, 4 do out[#out + 1] = v[j] or '0' end
  return v
end
local function keep_for(i, ttl)
  for k = 3 * i - 2, 3 * i do redis.call('PEXPIRE', KEYS[k], ttl) end
end
"""

# KEYS: state, res, exp per line. ARGV: id, now_ms, reservation expiry ms, usd, tokens,
# then per line: usd limit, token limit (-1: none), key lifetime ms.
# A line whose state has no seed mark reserves nothing: the reply is -1 and those lines' numbers.
_RESERVE = (
    _PURGE
    + """
local unseeded = {}
for i = 1, #KEYS / 3 do
  if redis.call('HEXISTS', KEYS[3 * i - 2], 'seeded') == 0 then unseeded[#unseeded + 1] = i end
end
if #unseeded > 0 then
  table.insert(unseeded, 1, -1)
  return unseeded
end
local id, now, expires, usd, tokens = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out, refused = {}, 0
for i = 1, #KEYS / 3 do
  purge(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], now)
  local v = read(KEYS[3 * i - 2], out)
  local limit_usd, limit_tokens = tonumber(ARGV[3 * i + 3]), tonumber(ARGV[3 * i + 4])
  local total_usd = tonumber(v[1] or '0') + tonumber(v[3] or '0') + tonumber(usd)
  local total_tokens = tonumber(v[2] or '0') + tonumber(v[4] or '0') + tonumber(tokens)
  if refused == 0 and ((limit_usd >= 0 and total_usd > limit_usd)
      or (limit_tokens >= 0 and total_tokens > limit_tokens)) then
    refused = i
  end
end
if refused == 0 then
  for i = 1, #KEYS / 3 do
    redis.call('HINCRBY', KEYS[3 * i - 2], 'inflight_usd', usd)
    redis.call('HINCRBY', KEYS[3 * i - 2], 'inflight_tokens', tokens)
    redis.call('HSET', KEYS[3 * i - 1], id, usd .. ':' .. tokens)
    redis.call('ZADD', KEYS[3 * i], expires, id)
    keep_for(i, ARGV[3 * i + 5])
  end
end
table.insert(out, 1, refused)
return out
"""
)

# A settle or release finishes a reservation once: its id goes into the tenant's finished set
# (the last key), scored by when it may be forgotten. The tail of ARGV: now_ms, forget_at_ms, keep_ms.
_FINISH = """
local function finish(id)
  local done, now, forget_at, keep = KEYS[#KEYS], ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
  redis.call('ZREMRANGEBYSCORE', done, '-inf', now)
  if redis.call('ZSCORE', done, id) then return false end
  redis.call('ZADD', done, forget_at, id)
  if redis.call('PTTL', done) < tonumber(keep) then redis.call('PEXPIRE', done, keep) end
  return true
end
"""

# ARGV: id, usd, tokens, then per line: key lifetime ms, then the finish tail.
# Returns 1 (applied) or 0 (finished before: nothing changed), then the totals per line.
_SETTLE = (
    _PURGE
    + _FINISH
    + """
local applied = finish(ARGV[1])
local out = {applied and 1 or 0}
for i = 1, (#KEYS - 1) / 3 do
  if applied then
    drop(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[1])
    redis.call('HINCRBY', KEYS[3 * i - 2], 'used_usd', ARGV[2])
    redis.call('HINCRBY', KEYS[3 * i - 2], 'used_tokens', ARGV[3])
    keep_for(i, ARGV[3 + i])
  end
  read(KEYS[3 * i - 2], out)
end
return out
"""
)

# ARGV: id, then the finish tail. Returns 1 (released) or 0 (finished before: nothing changed).
_RELEASE = (
    _PURGE
    + _FINISH
    + """
if not finish(ARGV[1]) then return {0} end
for i = 1, (#KEYS - 1) / 3 do
  drop(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[1])
end
return {1}
"""
)

# ARGV: now_ms.
_USAGE = (
    _PURGE
    + """
local out = {}
for i = 1, #KEYS / 3 do
  purge(KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[1])
  read(KEYS[3 * i - 2], out)
end
return out
"""
)


# KEYS: state, res, exp per line. ARGV per line: usd, tokens, key lifetime ms. Where the mark
# is absent, raises used to the seed (never lowers it: settles that reached the emptied store
# first, or a period's usage from before marks existed, stay) and sets the mark.
# Returns 1 per line this call seeded, 0 where another call already had.
_SEED = (
    _PURGE
    + """
local function raise_to(key, field, n)
  if tonumber(n) > tonumber(redis.call('HGET', key, field) or '0') then redis.call('HSET', key, field, n) end
end
local out = {}
for i = 1, #KEYS / 3 do
  local state = KEYS[3 * i - 2]
  if redis.call('HSETNX', state, 'seeded', 1) == 1 then
    raise_to(state, 'used_usd', ARGV[3 * i - 2])
    raise_to(state, 'used_tokens', ARGV[3 * i - 1])
    keep_for(i, ARGV[3 * i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _keys(line: BudgetLine) -> list[str]:
    base = f"tw:budget:{{{_digest(line.tenant)}}}:{_digest(line.budget)}:{line.period}"
    return [f"{base}:state", f"{base}:res", f"{base}:exp"]


def _finished_key(lines: Sequence[BudgetLine]) -> str:
    """The tenant's finished reservation ids (a reservation's lines are all one tenant's)."""
    tenant = lines[0].tenant if lines else ""
    return f"tw:budget:{{{_digest(tenant)}}}:finished"


def _finish_args(now: float, keep_s: float) -> list[str | int]:
    return [_ms(now), _ms(now + keep_s), max(1, _ms(keep_s))]


def _alerts_key(line: BudgetLine) -> str:
    return f"tw:budget:{{{_digest(line.tenant)}}}:{_digest(line.budget)}:{line.period}:alerts"


def _states(values: Sequence[Any]) -> tuple[LineState, ...]:
    numbers = [int(v) for v in values]
    return tuple(
        LineState(Amount(numbers[i], numbers[i + 1]), Amount(numbers[i + 2], numbers[i + 3]))
        for i in range(0, len(numbers), 4)
    )


class RedisBudgetStore:
    def __init__(self, client: Redis) -> None:
        self._client = client
        kwargs = client.connection_pool.connection_kwargs
        self.name = f"Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._usage = client.register_script(_USAGE)
        self._seed = client.register_script(_SEED)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25) -> RedisBudgetStore:
        client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        return cls(client)

    async def reserve(
        self, reservation_id: str, lines: Sequence[BudgetLine], amount: Amount, now: float, ttl_s: float
    ) -> ReserveResult:
        args: list[str | int] = [reservation_id, _ms(now), _ms(now + ttl_s), amount.usd_nanos, amount.tokens]
        for line in lines:
            args += [_limit(line.hard.usd_nanos), _limit(line.hard.tokens), _lifetime_ms(line, now)]
        reply = await self._call(self._reserve, lines, args)
        refused = int(reply[0])
        if refused < 0:
            return ReserveResult((), unseeded=tuple(int(i) - 1 for i in reply[1:]))
        return ReserveResult(_states(reply[1:]), refused - 1 if refused else None)

    async def settle(
        self, reservation_id: str, lines: Sequence[BudgetLine], actual: Amount, now: float, keep_s: float
    ) -> SettleResult:
        args: list[str | int] = [reservation_id, actual.usd_nanos, actual.tokens]
        args += [_lifetime_ms(line, now) for line in lines]
        args += _finish_args(now, keep_s)
        reply = await self._call(self._settle, lines, args, extra_keys=[_finished_key(lines)])
        return SettleResult(tuple(state.used for state in _states(reply[1:])), applied=int(reply[0]) == 1)

    async def release(
        self, reservation_id: str, lines: Sequence[BudgetLine], now: float, keep_s: float
    ) -> bool:
        args: list[str | int] = [reservation_id, *_finish_args(now, keep_s)]
        reply = await self._call(self._release, lines, args, extra_keys=[_finished_key(lines)])
        return int(reply[0]) == 1

    async def usage(self, lines: Sequence[BudgetLine], now: float) -> tuple[LineState, ...]:
        return _states(await self._call(self._usage, lines, [_ms(now)]))

    async def seed(self, lines: Sequence[BudgetLine], used: Sequence[Amount], now: float) -> tuple[bool, ...]:
        args: list[str | int] = []
        for line, amount in zip(lines, used, strict=True):
            args += [amount.usd_nanos, amount.tokens, _lifetime_ms(line, now)]
        return tuple(bool(int(v)) for v in await self._call(self._seed, lines, args))

    async def unseeded(self, lines: Sequence[BudgetLine]) -> tuple[int, ...]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for line in lines:
                    pipe.hexists(_keys(line)[0], "seeded")
                marked = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return tuple(i for i, present in enumerate(marked) if not present)

    async def mark_alerts(self, line: BudgetLine, marks: Sequence[str], now: float) -> tuple[str, ...]:
        key = _alerts_key(line)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for mark in marks:
                    pipe.sadd(key, mark)
                pipe.pexpire(key, _lifetime_ms(line, now))
                added = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return tuple(mark for mark, new in zip(marks, added, strict=False) if new)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(
        self, script: Any, lines: Sequence[BudgetLine], args: list[str | int], extra_keys: Sequence[str] = ()
    ) -> list[Any]:
        keys = [key for line in lines for key in _keys(line)] + list(extra_keys)
        try:
            reply = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return list(reply) if isinstance(reply, list) else []

    def _unavailable(self, exc: BaseException) -> BudgetStoreUnavailable:
        return BudgetStoreUnavailable(f"budget store {self.name} unavailable: {type(exc).__name__}: {exc}")


def _lifetime_ms(line: BudgetLine, now: float) -> int:
    """Relative expiry: measured on the caller's clock, so clock skew with the Redis host does not matter."""
    return max(1, _ms(line.expires_at - now))


def _limit(value: int | None) -> int:
    return -1 if value is None else value
