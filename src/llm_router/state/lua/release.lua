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
  out[#out + 1] = end_lease(id, lease_id, now, woken, function()
    if exclude ~= '' then exclude_pair(id, exclude, now + cooldown, now) end
    if refused ~= '' then cool_down(k_unsupported(id), refused, now + cooldown, now) end
    if response_id ~= '' then
      local key = k_response(response_id)
      redis.call('HSET', key, 'node', id, 'model', response_model)
      redis.call('PEXPIRE', key, response_ttl)
    end
  end)
end
return out
