-- A node's heartbeat: refresh liveness, replace its executable set atomically, store metrics.
-- The first "ready" heartbeat after a runtime outage lifts the node's exclusions (the
-- failures were the outage's) and wakes requests queued for its models.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id
-- ARGV[2]  sha256 of the token presented
-- ARGV[3]  JSON object of routing fields (strings) to store on the node hash; "models" as
--          "" means the installed set is the executable one: the field is dropped, not stored
-- ARGV[4]  JSON list of executable models, or "" to keep the stored set
-- ARGV[5]  unused (installed models travel in ARGV[3] as "models" and are marked known
--          from there)
-- ARGV[6]  liveness TTL (ms)
-- ARGV[7]  digest of the routing state ARGV[3] and ARGV[4] describe, or "" (always apply)
-- ARGV[8]  the display metrics, one JSON object stored as is in node-metrics:<id> (never
--          decoded on the unchanged path)
-- ARGV[9]  "1": a light call, ARGV[3] and ARGV[4] left empty (the replica expects the digest
--          to match): anything but the unchanged beat answers {"full"}, nothing written, and
--          the replica calls again with every argument
-- ARGV[10] a short digest of which metrics ARGV[8] holds (part of ARGV[7] too)
-- Returns {"ok", in_flight} | {"ok"} (nothing changed: no count) | {"full"} (ARGV[9]) |
-- {"not_found"} | {"unauthorized"}

local id = ARGV[1]
local key = k_node(id)
local alive_ttl = tonumber(ARGV[6])
local digest = ARGV[7] or ''
local metrics = ARGV[8] or '{}'
-- An unchanged beat runs the lapsed-node sweep one time in this many (by the clock's last
-- digits): the sweep is housekeeping, never what routing trusts (walks check each node's
-- deadline, /v1/models subtracts the lapsed but unswept), so pacing it only delays
-- removing dead entries; every changed beat and prune still sweep.
local UNCHANGED_SWEEP_PACE = 4

-- The unchanged beat. The stored state_digest is "<digest>@<last_seen>@<token>@<names>",
-- written with that last_seen by this script alone, under the token presented (its digest's
-- first characters): a last_seen written since by anything else (an older replica's heartbeat
-- storing each field itself) or a new token (any registration, of any version) breaks the
-- stamp, and the beat takes the full path. With the stamp intact and the same digest,
-- applying the routing fields again would change nothing, unless time did: a lapsed
-- liveness (the node comes back), a cool-down that ended, a models:known refresh that is
-- due. Those take the full path too.
local c = hmget_named(key, {'token_hash', 'state_digest', 'last_seen', 'alive_until',
  'excl_next', 'known_at'})
if not c.token_hash then return {'not_found'} end
if c.token_hash ~= ARGV[2] then return {'unauthorized'} end
local now = now_ms()
local stamp = string.format('%.0f', now)
local token = '@' .. string.sub(ARGV[2], 1, 8) .. '@' .. (ARGV[10] or '')
if digest ~= '' and c.state_digest == digest .. '@' .. (c.last_seen or '') .. token
    and (tonumber(c.alive_until or '') or 0) >= now
    and (c.excl_next == nil or tonumber(c.excl_next) > now)
    and now - (tonumber(c.known_at or '') or 0) < KNOWN_REFRESH_MS then
  redis.call('HSET', key, 'last_seen', stamp, 'alive_until', now + alive_ttl,
    'state_digest', digest .. '@' .. stamp .. token)
  redis.call('SET', k_node_metrics(id), metrics)
  redis.call('ZADD', k_alive(), now + alive_ttl, id)
  -- Leases of a dead replica still end here at the latest: one look at the earliest.
  local first = redis.call('ZRANGE', k_leases(id), 0, 0, 'WITHSCORES')[2]
  if first and tonumber(first) <= now then in_flight(id, now) end
  if now % UNCHANGED_SWEEP_PACE == 0 then sweep_lapsed(now, SWEEP_BATCH) end
  return {'ok'}
end
if ARGV[9] == '1' then return {'full'} end

-- A metric a beat no longer carries keeps its last value, as it would if every metric had a
-- field of its own: metrics_kept holds those (JSON, like metrics), the record lays metrics
-- over it. The set of metric names is in the digest, so only a full beat can change it, and
-- one that sends the names the stamp holds leaves metrics_kept as it is: it holds none of
-- them, and the stored metrics hold just them.
local function metrics_to_keep(sent_raw)
  local names = ARGV[10] or ''
  if names ~= '' and c.state_digest and string.match(c.state_digest, '@([^@]*)$') == names then
    return
  end
  local shown = {metrics = redis.call('GET', k_node_metrics(id)) or nil,
    metrics_kept = redis.call('HGET', key, 'metrics_kept') or nil}
  local ok, sent = pcall(cjson.decode, sent_raw)
  if not ok or type(sent) ~= 'table' then sent = {} end
  local kept, any = {}, false
  for _, raw in ipairs({shown.metrics_kept or '{}', shown.metrics or '{}'}) do
    local fine, old = pcall(cjson.decode, raw)
    if fine and type(old) == 'table' then
      for name, value in pairs(old) do
        if sent[name] == nil then kept[name], any = value, true end
      end
    end
  end
  if any then redis.call('HSET', key, 'metrics_kept', cjson.encode(kept))
  elseif shown.metrics_kept then redis.call('HDEL', key, 'metrics_kept') end
end
metrics_to_keep(metrics)

-- One read serves the checks, the before/after comparisons and refresh_liveness: the
-- state as it will stand after this call's HSET is the stored one with the fields sent
-- laid over it (every field is a string both ways).
local s = hmget_named(key, HEARTBEAT_FIELDS)
local fields = cjson.decode(ARGV[3])
local was = s.runtime_status
local recovered = fields.runtime_status == 'ready' and was and was ~= '' and was ~= 'ready'
if recovered then redis.call('DEL', k_excluded(id)) end
local before = {loaded_models = s.loaded_models, max_concurrency = s.max_concurrency,
  models = s.models, alive_until = s.alive_until}
-- "" for models: the installed set is the executable one, kept once (readers fall back).
if fields.models == '' then
  fields.models = nil
  if s.models then redis.call('HDEL', key, 'models') end
  s.models = nil
elseif fields.models == nil and s.models == nil and ARGV[4] ~= ''
    and ARGV[4] ~= s.executable_models and s.executable_models then
  -- No installed list sent, and the stored one is the executable set about to change:
  -- an absent list leaves the stored value as it was, so it is written out now. It was
  -- that list before this beat too: nothing newly installed to mark known.
  fields.models = s.executable_models
  before.models = s.executable_models
end
local args = {'last_seen', stamp, 'alive_until', now + alive_ttl}
for name, value in pairs(fields) do
  args[#args + 1] = name
  args[#args + 1] = value
  s[name] = value
end
redis.call('HSET', key, unpack(args))

local executable = nil
if ARGV[4] ~= '' then executable = ARGV[4] end
refresh_liveness(id, now, alive_ttl, executable, before, s)
if recovered then wake_for_node(id, {}) end
redis.call('SET', k_node_metrics(id), metrics)
-- Stamped last, once the state it vouches for is all written.
if digest ~= '' then redis.call('HSET', key, 'state_digest', digest .. '@' .. stamp .. token) end
-- Leases of a dead replica end here at the latest (and the raised entries come down).
return {'ok', in_flight(id, now)}
