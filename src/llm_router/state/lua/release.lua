-- End leases: free their slots, optionally put a (node, model) pair in cool-down, and wake
-- replicas waiting for capacity on the nodes' models. Takes a batch, so a busy replica
-- ends many leases in one round trip.
--
-- KEYS[1]  fleet base
-- ARGV[1]  number of leases N
-- ARGV[2 + 4k .. 5 + 4k], k = 0 .. N-1:
--          node id, lease id,
--          model to exclude on this node or "" (the attempt failed before any byte),
--          cool-down (ms) for that exclusion
-- Returns each node's in-flight count after its release, in order.

local now = now_ms()
local out = {}
local woken = {}
for k = 0, tonumber(ARGV[1]) - 1 do
  local id, lease_id = ARGV[2 + 4 * k], ARGV[3 + 4 * k]
  local exclude, cooldown = ARGV[4 + 4 * k], tonumber(ARGV[5 + 4 * k])
  redis.call('ZREM', k_leases(id), lease_id)
  local inflight = in_flight(id, now)
  out[#out + 1] = inflight
  local f = routing_fields(id)
  if f[3] then  -- else the node was removed meanwhile
    if exclude ~= '' then
      local key = k_excluded(id)
      redis.call('ZADD', key, now + cooldown, exclude)
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
      redis.call('PEXPIREAT', key, redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
      redis.call('ZREM', k_model_load(exclude), id)
    end
    local models = decode_list(f[6])
    update_scores_for(models, id, (score_of(f, inflight)), warm_set(f))
    for _, m in ipairs(models) do
      if not woken[m] then
        woken[m] = true
        wake_queues({m})
      end
    end
  end
end
return out
