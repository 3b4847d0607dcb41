-- A node's heartbeat: refresh liveness, replace its executable set atomically, store metrics.
-- The first "ready" heartbeat after a runtime outage lifts the node's exclusions (the
-- failures were the outage's) and wakes requests queued for its models.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id
-- ARGV[2]  sha256 of the token presented
-- ARGV[3]  JSON object of fields (strings) to store on the node hash; "models" as ""
--          means the installed set is the executable one: the field is dropped, not stored
-- ARGV[4]  JSON list of executable models, or "" to keep the stored set
-- ARGV[5]  unused (installed models travel in ARGV[3] as "models" and are marked known
--          from there)
-- ARGV[6]  liveness TTL (ms)
-- Returns {"ok", in_flight} | {"not_found"} | {"unauthorized"}

local id = ARGV[1]
local key = k_node(id)
-- One read serves the checks, the before/after comparisons and refresh_liveness: the
-- state as it will stand after this call's HSET is the stored one with the fields sent
-- laid over it (every field is a string both ways).
local s = hmget_named(key, HEARTBEAT_FIELDS)
if not s.token_hash then return {'not_found'} end
if s.token_hash ~= ARGV[2] then return {'unauthorized'} end

local now = now_ms()
local alive_ttl = tonumber(ARGV[6])
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
local args = {'last_seen', now, 'alive_until', now + alive_ttl}
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
-- Leases of a dead replica end here at the latest (and the raised entries come down).
return {'ok', in_flight(id, now)}
