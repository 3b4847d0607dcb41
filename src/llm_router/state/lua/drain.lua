-- Drain a node (no new requests; in-flight ones finish) or lift the drain.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id
-- ARGV[2]  "1" to drain, "0" to undrain
-- Returns {"ok", in_flight} | {"not_found"}

local id = ARGV[1]
local key = k_node(id)
if redis.call('EXISTS', key) == 0 then return {'not_found'} end
local now = now_ms()
if ARGV[2] == '1' then
  redis.call('HSET', key, 'draining', '1')
else
  redis.call('HDEL', key, 'draining')
end
sync_load_membership(id, now)
return {'ok', in_flight(id, now)}
