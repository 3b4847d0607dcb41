-- Push the deadlines of live leases and queue tickets of one replica forward, in one call.
--
-- KEYS[1]  fleet base
-- ARGV[1]  lease TTL (ms)
-- ARGV[2]  ticket TTL (ms)
-- ARGV[3]  number of leases L
-- ARGV[4 .. 3+2L]           node id, lease id pairs
-- ARGV[4+2L ..]             model, ticket pairs
-- Returns {leases renewed, tickets renewed}. A lease or ticket that already expired is
-- not revived (XX): its slot may have gone to someone else.

local now = now_ms()
local lease_deadline = now + tonumber(ARGV[1])
local ticket_deadline = now + tonumber(ARGV[2])
local n_leases = tonumber(ARGV[3])
local leases, tickets = 0, 0
local i = 4
for _ = 1, n_leases do
  local key = k_leases(ARGV[i])
  if (tonumber(redis.call('ZSCORE', key, ARGV[i + 1]) or '0')) > now then
    leases = leases + redis.call('ZADD', key, 'XX', 'CH', lease_deadline, ARGV[i + 1])
  end
  i = i + 2
end
while i < #ARGV do
  local key = k_queue_alive(ARGV[i])
  if (tonumber(redis.call('ZSCORE', key, ARGV[i + 1]) or '0')) > now then
    tickets = tickets + redis.call('ZADD', key, 'XX', 'CH', ticket_deadline, ARGV[i + 1])
  end
  i = i + 2
end
return {leases, tickets}
