-- A node's heartbeat: refresh liveness, replace its executable set atomically, store metrics.
-- The first "ready" heartbeat after a runtime outage lifts the node's exclusions (the
-- failures were the outage's) and wakes requests queued for its models.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id
-- ARGV[2]  sha256 of the token presented
-- ARGV[3]  JSON object of fields (strings) to store on the node hash
-- ARGV[4]  JSON list of executable models, or "" to keep the stored set
-- ARGV[5]  JSON list of installed models, or "" (only marks them known)
-- ARGV[6]  liveness TTL (ms)
-- Returns {"ok", in_flight} | {"not_found"} | {"unauthorized"}

local id = ARGV[1]
local key = k_node(id)
local token_hash = redis.call('HGET', key, 'token_hash')
if not token_hash then return {'not_found'} end
if token_hash ~= ARGV[2] then return {'unauthorized'} end

local now = now_ms()
local fields = cjson.decode(ARGV[3])
local was = redis.call('HGET', key, 'runtime_status')
local recovered = fields.runtime_status == 'ready' and was and was ~= '' and was ~= 'ready'
if recovered then redis.call('DEL', k_excluded(id)) end
local args = {'last_seen', now}
for name, value in pairs(fields) do
  args[#args + 1] = name
  args[#args + 1] = value
end
redis.call('HSET', key, unpack(args))

local executable = nil
if ARGV[4] ~= '' then executable = ARGV[4] end
refresh_liveness(id, now, tonumber(ARGV[6]), executable, decode_list(ARGV[5]))
if recovered then wake_queues(node_models(id)) end
return {'ok', redis.call('ZCARD', k_leases(id))}
