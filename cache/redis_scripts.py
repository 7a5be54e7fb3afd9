"""The Lua scripts of the Redis entry store (its key layout is described in ``tierwise.cache.redis_store``).

Each script runs atomically over one cache's keys and appends the change event of
everything it changes to the replication stream, so a change and its event are never apart.
"""

# Every script gets the fixed keys below as KEYS and ARGV[1..4] = key prefix, stream length, writer id,
# and an instance id to adopt if the store has none yet (a fresh or flushed Redis).
_PRELUDE = """
local META, STREAM, REFS, CREATED, EXPIRES, USED, SAVED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local P, MAXLEN, WRITER, INSTANCE = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local function emit(op, id, pk, ek)
  redis.call('HSETNX', META, 'instance_id', INSTANCE)
  local n = redis.call('HINCRBY', META, 'events', 1)
  redis.call('XADD', STREAM, 'MAXLEN', '~', MAXLEN, '*', 'op', op, 'id', id, 'pk', pk, 'ek', ek, 'n', n, 'w', WRITER)
end

local function ref_of(id)
  local raw = redis.call('HGET', REFS, id)
  if raw then return cjson.decode(raw) end
  return nil
end

-- Remove an entry from every key and announce it; appends id, partition, embedder to out.
local function remove(id, out)
  local ref = ref_of(id)
  if not ref then return false end
  redis.call('HDEL', REFS, id)
  for _, z in ipairs({CREATED, EXPIRES, USED, SAVED}) do redis.call('ZREM', z, id) end
  redis.call('SREM', P .. 'p:' .. ref[1], id)
  redis.call('SREM', P .. 't:' .. ref[3], id)
  redis.call('DEL', P .. 'e:' .. id)
  local xkey = P .. 'x:' .. ref[4]
  if redis.call('GET', xkey) == id then redis.call('DEL', xkey) end
  emit('del', id, ref[1], ref[2])
  out[#out + 1] = id
  out[#out + 1] = ref[1]
  out[#out + 1] = ref[2]
  return true
end
"""

# ARGV[5..]: id, exact key, tenant, partition, embedder, expiry ms, created_at, expires_at, last used,
# saved, then the entry hash's field/value pairs. Returns the replaced entries as id/partition/embedder.
INSERT_SCRIPT = (
    _PRELUDE
    + """
local id, exact, tenant, pk, ek = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local exp_ms = tonumber(ARGV[10])
local out = {}
local xkey = P .. 'x:' .. exact
local old = redis.call('GET', xkey)
if old then remove(old, out) end
local ekey = P .. 'e:' .. id
local fields = {}
for i = 15, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', ekey, unpack(fields))
redis.call('PEXPIREAT', ekey, ARGV[10])
redis.call('SET', xkey, id, 'PXAT', ARGV[10])
redis.call('HSET', REFS, id, cjson.encode({pk, ek, tenant, exact}))
redis.call('ZADD', CREATED, ARGV[11], id)
redis.call('ZADD', EXPIRES, ARGV[12], id)
redis.call('ZADD', USED, ARGV[13], id)
redis.call('ZADD', SAVED, ARGV[14], id)
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for _, members in ipairs({P .. 't:' .. tenant, P .. 'p:' .. pk}) do
  redis.call('SADD', members, id)
  local ttl = redis.call('PTTL', members)
  if ttl == -1 or now_ms + ttl < exp_ms then redis.call('PEXPIREAT', members, ARGV[10]) end
end
emit('add', id, pk, ek)
return out
"""
)

# ARGV[5..]: mode ('scan' or 'delete'), entry id, tenant, partition, created before, expires before;
# '' is unset. Returns id/partition/embedder triples.
SELECT_SCRIPT = (
    _PRELUDE
    + """
local mode, entry_id, tenant, pk, created_before, expires_before = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local candidates, members
if entry_id ~= '' then
  candidates = {entry_id}
elseif pk ~= '' then
  members = P .. 'p:' .. pk
  candidates = redis.call('SMEMBERS', members)
elseif tenant ~= '' then
  members = P .. 't:' .. tenant
  candidates = redis.call('SMEMBERS', members)
elseif expires_before ~= '' then
  candidates = redis.call('ZRANGEBYSCORE', EXPIRES, '-inf', expires_before)
else
  candidates = redis.call('ZRANGEBYSCORE', CREATED, '-inf', '(' .. created_before)
end
local out = {}
for _, id in ipairs(candidates) do
  local ref = ref_of(id)
  if not ref then
    if members and mode == 'delete' then redis.call('SREM', members, id) end
  elseif (pk == '' or ref[1] == pk) and (tenant == '' or ref[3] == tenant)
      and (created_before == '' or tonumber(redis.call('ZSCORE', CREATED, id)) < tonumber(created_before))
      and (expires_before == '' or tonumber(redis.call('ZSCORE', EXPIRES, id)) <= tonumber(expires_before)) then
    if mode == 'delete' then
      remove(id, out)
    else
      out[#out + 1] = id
      out[#out + 1] = ref[1]
      out[#out + 1] = ref[2]
    end
  end
end
return out
"""
)

# ARGV[5..]: count, keep (-1: none), then the candidates in eviction order ('lru': take them from z:used).
EVICT_SCRIPT = (
    _PRELUDE
    + """
local n = tonumber(ARGV[5])
local keep = tonumber(ARGV[6])
if keep >= 0 then n = math.min(n, redis.call('HLEN', REFS) - keep) end
local out = {}
if n <= 0 then return out end
local candidates = {}
if ARGV[7] == 'lru' then
  candidates = redis.call('ZRANGE', USED, 0, n - 1)
else
  for i = 8, #ARGV do candidates[#candidates + 1] = ARGV[i] end
end
local removed = 0
for _, id in ipairs(candidates) do
  if removed >= n then break end
  if remove(id, out) then removed = removed + 1 end
end
return out
"""
)

# ARGV[5..]: per entry: id, hits, last hit ('' none), saved.
TOUCH_SCRIPT = (
    _PRELUDE
    + """
for i = 5, #ARGV, 4 do
  local id, hits, last, saved = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local ekey = P .. 'e:' .. id
  if redis.call('EXISTS', ekey) == 1 then
    if hits ~= 0 then redis.call('HINCRBY', ekey, 'hits', hits) end
    if last ~= '' then
      local current = redis.call('HGET', ekey, 'last_hit_at')
      if not current or current == '' or tonumber(last) > tonumber(current) then
        redis.call('HSET', ekey, 'last_hit_at', last)
      end
      redis.call('ZADD', USED, 'GT', last, id)
    end
    if saved ~= 0 then
      redis.call('HINCRBYFLOAT', ekey, 'saved', ARGV[i + 3])
      redis.call('ZINCRBY', SAVED, ARGV[i + 3], id)
    end
  end
end
return 0
"""
)

# ARGV[5..]: id, threshold delta, negative delta. Returns {threshold, negatives} or false.
FEEDBACK_SCRIPT = (
    _PRELUDE
    + """
local ekey = P .. 'e:' .. ARGV[5]
if redis.call('EXISTS', ekey) == 0 then return false end
local threshold = redis.call('HINCRBYFLOAT', ekey, 'threshold_adjust', ARGV[6])
local negatives = redis.call('HINCRBY', ekey, 'negative_feedback', ARGV[7])
return {threshold, negatives}
"""
)

# ARGV[5]: exact key. Returns {id, field, value, ...} or false.
BY_EXACT_KEY_SCRIPT = (
    _PRELUDE
    + """
local id = redis.call('GET', P .. 'x:' .. ARGV[5])
if not id then return false end
local fields = redis.call('HGETALL', P .. 'e:' .. id)
if #fields == 0 then return false end
table.insert(fields, 1, id)
return fields
"""
)

# Returns {instance id, changes appended, id of the last change or '0-0'}.
POSITION_SCRIPT = (
    _PRELUDE
    + """
redis.call('HSETNX', META, 'instance_id', INSTANCE)
local values = redis.call('HMGET', META, 'instance_id', 'events')
local last = redis.call('XREVRANGE', STREAM, '+', '-', 'COUNT', 1)
local change_id = '0-0'
if #last > 0 then change_id = last[1][1] end
return {values[1], values[2] or '0', change_id}
"""
)
