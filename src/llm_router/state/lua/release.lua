-- End leases: free their slots, optionally put a (node, model) pair in cool-down or note
-- that the node does not serve an endpoint family, remember a response id the node
-- created, and wake replicas waiting for capacity on the nodes' models. Takes a batch, so
-- a busy replica ends many leases in one round trip.
--
-- KEYS[1]  fleet base
-- ARGV[1]  number of leases N
-- ARGV[2]  how long (ms) a recorded response id keeps pointing at its node
-- ARGV[3 + 7k .. 9 + 7k], k = 0 .. N-1:
--          node id, lease id,
--          model to exclude on this node or "" (the attempt failed before any byte),
--          cool-down (ms) for that exclusion or refusal,
--          endpoint family the node declined (404/405/501) or "",
--          response id the node created or "", and the model it was created with
-- Returns each node's in-flight count after its release, in order.

local now = now_ms()
local response_ttl = tonumber(ARGV[2])
local out = {}
local woken = {}
for k = 0, tonumber(ARGV[1]) - 1 do
  local at = 3 + 7 * k
  local id, lease_id = ARGV[at], ARGV[at + 1]
  local exclude, cooldown, refused = ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4]
  local response_id, response_model = ARGV[at + 5], ARGV[at + 6]
  redis.call('ZREM', k_leases(id), lease_id)
  local inflight = in_flight(id, now)
  out[#out + 1] = inflight
  local f = routing_fields(id)
  if f[3] then  -- else the node was removed meanwhile
    if exclude ~= '' then
      cool_down(k_excluded(id), exclude, now + cooldown, now)
      redis.call('ZREM', k_model_load(exclude), id)
    end
    if refused ~= '' then cool_down(k_unsupported(id), refused, now + cooldown, now) end
    if response_id ~= '' then
      local key = k_response(response_id)
      redis.call('HSET', key, 'node', id, 'model', response_model)
      redis.call('PEXPIRE', key, response_ttl)
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
