-- End a lease: free the slot, optionally put the (node, model) pair in cool-down, and wake
-- replicas waiting for capacity on the node's models.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id
-- ARGV[2]  lease id
-- ARGV[3]  model to exclude on this node, or "" (the attempt failed before any byte)
-- ARGV[4]  cool-down (ms) for that exclusion
-- Returns the node's in-flight count after the release.

local id, lease_id, exclude = ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
redis.call('ZREM', k_leases(id), lease_id)
local inflight = in_flight(id, now)
local f = routing_fields(id)
if not f[3] then return inflight end  -- the node was removed meanwhile

if exclude ~= '' then
  local until_ms = now + tonumber(ARGV[4])
  redis.call('ZADD', k_excluded(id), until_ms, exclude)
  redis.call('ZREMRANGEBYSCORE', k_excluded(id), '-inf', now)
  redis.call('PEXPIREAT', k_excluded(id), redis.call('ZRANGE', k_excluded(id), -1, -1,
    'WITHSCORES')[2])
  redis.call('ZREM', k_model_load(exclude), id)
end
local models = decode_list(f[6])
update_scores_for(models, id, (score_of(f, inflight)))
wake_queues(models)
return inflight
