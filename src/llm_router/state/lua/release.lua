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
  local exclude, refused, response_id = ARGV[at + 2], ARGV[at + 4], ARGV[at + 5]
  local on_node, what = nil, nil
  if exclude ~= '' or refused ~= '' or response_id ~= '' then
    on_node, what = record_attempt, {exclude = exclude, cooldown = tonumber(ARGV[at + 3]),
      refused = refused, response_id = response_id, response_model = ARGV[at + 6],
      response_ttl = response_ttl}
  end
  out[#out + 1] = end_lease(ARGV[at], ARGV[at + 1], now, woken, on_node, what)
end
return out
