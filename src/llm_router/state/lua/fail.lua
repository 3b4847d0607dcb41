-- End the lease of a failed attempt and weigh what the failure says about the node.
--
-- A (node, model) pair is excluded for the cool-down at once when the node could not be
-- reached; otherwise the failure is evidence: the request's digest joins the pair's
-- failures, and the pair is excluded once that many different requests failed on it
-- within the window. The set expires with its newest member, so nothing lingers.
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id, or "" to only withdraw (ARGV[9]) when the request ended in failure
-- ARGV[2]  lease id
-- ARGV[3]  model
-- ARGV[4]  "now" (exclude at once) | "evidence" (count it) | "none" (just release)
-- ARGV[5]  cool-down (ms) of an exclusion
-- ARGV[6]  digest of the request
-- ARGV[7]  different failing requests that exclude the pair
-- ARGV[8]  window (ms) in which they must fall
-- ARGV[9]  node on which this request's earlier failure counted, to withdraw it (the
--          request failed on two nodes: it is suspect, not them), or ""
-- Returns {in_flight, 1 if the pair is now excluded else 0}

local id, lease_id, model, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local digest, window = ARGV[6], tonumber(ARGV[8])
local now = now_ms()
if ARGV[9] ~= '' then
  redis.call('ZREM', k_failures(ARGV[9], model), digest)
end
if id == '' then return {0, 0} end
if mode == 'evidence' then
  local key = k_failures(id, model)
  redis.call('ZADD', key, now, digest)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[7]) then
    redis.call('DEL', key)  -- the exclusion starts a fresh count when it ends
    mode = 'now'
  else
    redis.call('PEXPIRE', key, window)
  end
end
local inflight = end_lease(id, lease_id, now, {}, function()
  if mode == 'now' then exclude_pair(id, model, now + tonumber(ARGV[5]), now) end
end)
return {inflight, mode == 'now' and 1 or 0}
