-- Drain a node (no new requests; in-flight ones finish) or lift the drain.
--
-- The drain is kept per identity (machine_name:runtime_port) in nodes:drained, so it
-- outlives the node's record: register.lua puts it back on every re-registration.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id, or "" to act on an identity with no record now
-- ARGV[2]  "1" to drain, "0" to undrain
-- ARGV[3]  identity "machine_name:runtime_port" (used when ARGV[1] is "")
-- Returns {"ok", in_flight} | {"not_found"}

local id = ARGV[1]
local draining = ARGV[2] == '1'
local ident = ARGV[3] or ''
local key = k_node(id)
local known = id ~= '' and redis.call('EXISTS', key) == 1
if known then
  local f = redis.call('HMGET', key, 'machine_name', 'runtime_port')
  ident = (f[1] or '') .. ':' .. (f[2] or '')
elseif ident == '' or (not draining and redis.call('HEXISTS', k_drained(), ident) == 0) then
  return {'not_found'}
end
local now = now_ms()
if draining then
  redis.call('HSET', k_drained(), ident, now)
else
  redis.call('HDEL', k_drained(), ident)
end
if not known then return {'ok', 0} end
if draining then
  redis.call('HSET', key, 'draining', '1')
else
  redis.call('HDEL', key, 'draining')
end
sync_load_membership(id, now)
return {'ok', in_flight(id, now)}
