-- Register a node, or update it when (machine_name, runtime_port) is already known.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id to use if this identity is new
-- ARGV[2]  identity "machine_name:runtime_port"
-- ARGV[3]  sha256 of the node's new token (the old token stops working)
-- ARGV[4]  JSON object of record fields (strings) to store on the node hash; "models" as
--          "" means the installed set is the executable one: the field is dropped
-- ARGV[5]  JSON list of executable models
-- ARGV[6]  JSON list of installed models (also in ARGV[4] as "models", whence they are
--          marked known)
-- ARGV[7]  liveness TTL (ms)
-- ARGV[8]  public id of the node key registering, or "" (admin key, open scope: unbounded)
-- ARGV[9]  most identities one node key may hold
-- Returns {"registered"|"updated", node_id} | {"too_many_identities", held}

local ident = ARGV[2]
local key_id = ARGV[8] or ''
local now = now_ms()
local id = redis.call('HGET', k_index(), ident)
-- One node key holds a bounded number of identities: a leaked key cannot inflate the fleet.
if key_id ~= '' then
  local held = k_key_identities(key_id)
  if redis.call('SISMEMBER', held, ident) == 0 then
    local count = redis.call('SCARD', held)
    if count >= tonumber(ARGV[9]) then return {'too_many_identities', count} end
    redis.call('SADD', held, ident)
  end
end
if id then
  local previous = redis.call('HGET', k_node(id), 'key_id')
  if previous and previous ~= '' and previous ~= key_id then
    redis.call('SREM', k_key_identities(previous), ident)
  end
end
local status = 'updated'
if not id then
  id = ARGV[1]
  status = 'registered'
  redis.call('HSET', k_index(), ident, id)
  redis.call('HSET', k_node(id), 'registered_at', now)
else
  -- An agent restart lifts what the previous incarnation earned: its exclusions.
  redis.call('DEL', k_excluded(id))
end
-- An admin drain belongs to the identity, not to one incarnation: a restarted (or deleted
-- and re-registered) agent comes back drained until someone undrains it.
if redis.call('HEXISTS', k_drained(), ident) == 1 then
  redis.call('HSET', k_node(id), 'draining', '1')
else
  redis.call('HDEL', k_node(id), 'draining')
end

local fields = cjson.decode(ARGV[4])
-- "" for models: the installed set is the executable one, kept once (readers fall back).
if fields.models == '' then
  fields.models = nil
  redis.call('HDEL', k_node(id), 'models')
end
local args = {}
for name, value in pairs(fields) do
  args[#args + 1] = name
  args[#args + 1] = value
end
args[#args + 1] = 'id'
args[#args + 1] = id
args[#args + 1] = 'token_hash'
args[#args + 1] = ARGV[3]
args[#args + 1] = 'key_id'
args[#args + 1] = key_id
args[#args + 1] = 'last_seen'
args[#args + 1] = now
redis.call('HSET', k_node(id), unpack(args))

refresh_liveness(id, now, tonumber(ARGV[7]), ARGV[5], nil)
return {status, id}
