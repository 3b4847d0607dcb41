-- The fair order of the fleet-wide queue: priority bands, then start-time fair queuing
-- (SFQ) among the tenants of a band, then FIFO within a tenant. Loaded for acquire.lua.
--
-- A queued ticket's score in queue:<model> is its place tag:
--   (9 - band) * BAND_SPAN + virtual start time
-- so ZRANGE 0 0 is the next to serve, exactly as with the plain FIFO, and the replica
-- that holds a ticket knows its tag for good (it never changes once queued).
--
-- Per band, queue-fair:<model> keeps V (field v:<band>, the start time of the last ticket
-- served) and each tenant's finish time F (field f:<band>:<tenant>). A request queues with
-- start = max(V, F) and moves F to start + VT_UNIT / weight. A tenant that arrives behind
-- another's backlog therefore starts at V, ahead of everything the backlog queued later;
-- a backlogged tenant of weight w advances by 1/w per request. The hash is dropped when
-- an arrival finds the queue empty (SFQ's idle reset), so the numbers stay small.

local BAND_SPAN = 1e14  -- 1e8 requests of a weight-1 tenant in one unbroken backlog
local VT_UNIT = 1e6     -- the virtual time one request of a weight-1 tenant costs

local function band_of(tag)
  return 9 - math.floor(tag / BAND_SPAN)
end

-- The tag a request of `tenant` in `band` would get now, and its virtual start time.
local function fair_tag(m, tenant, band)
  local h = redis.call('HMGET', k_queue_fair(m), 'v:' .. band, 'f:' .. band .. ':' .. tenant)
  local start = math.min(math.max(tonumber(h[1] or '0'), tonumber(h[2] or '0')), BAND_SPAN - 1)
  return (9 - band) * BAND_SPAN + start, start
end

local function fair_enqueue(m, tenant, band, weight, start)
  redis.call('HSET', k_queue_fair(m), 'f:' .. band .. ':' .. tenant,
    string.format('%.0f', start + math.floor(VT_UNIT / weight)))
end

-- A ticket with this tag was served: its band's virtual time catches up (never goes back).
local function fair_served(m, tag)
  local band = band_of(tag)
  local start = tag - (9 - band) * BAND_SPAN
  local field = 'v:' .. band
  if start > tonumber(redis.call('HGET', k_queue_fair(m), field) or '0') then
    redis.call('HSET', k_queue_fair(m), field, string.format('%.0f', start))
  end
end

local function fair_reset(m)
  redis.call('DEL', k_queue_fair(m), k_queue_info(m))
end

-- The queue is full. If its last ticket (the lowest band's last to be served) is in a
-- lower band than `tag`, refuse that waiter instead: the ticket published on the capacity
-- channel wakes its waiter, which hears "shed" when it looks. Returns true when a place
-- was freed.
local function shed_below(m, tag, now, ticket_ttl)
  local last = redis.call('ZRANGE', k_queue(m), -1, -1, 'WITHSCORES')
  if #last == 0 or band_of(tonumber(last[2])) >= band_of(tag) then return false end
  redis.call('ZREM', k_queue(m), last[1])
  redis.call('ZREM', k_queue_alive(m), last[1])
  redis.call('HDEL', k_queue_info(m), last[1])
  cool_down(k_queue_shed(m), last[1], now + ticket_ttl, now)
  redis.call('PUBLISH', k_events(), last[1])
  return true
end

-- Was this ticket shed from the queue (and not told yet)?
local function shed_ticket(m, ticket)
  return redis.call('ZREM', k_queue_shed(m), ticket) == 1
end

-- A key's requests in flight across the fleet. key-flight:<key id> lists "node lease"
-- pairs; each counts while its lease is live in leases:<node>, so the count ends with the
-- leases themselves (released, or expired with a dead replica) and nobody has to remove
-- members on release: the ones found ended are dropped here, and a key found with none
-- running is deleted.
--
-- Expiry: a lease is renewed for as long as its stream runs, by a script that does not know
-- the key, so no TTL tied to the lease is safe. The set instead lives KEY_FLIGHT_TTL_MS past
-- the key's last grant or check with requests running: a key nobody uses leaves nothing
-- behind, and only a stream running longer than that with no other request of its key in
-- the meantime would be forgotten by the count.
local KEY_FLIGHT_TTL_MS = 24 * 3600 * 1000

local function key_in_flight(key_id, now)
  local key = k_key_flight(key_id)
  local running = 0
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local node, lease = string.match(member, '^(%S+) (%S+)$')
    local deadline = node and tonumber(redis.call('ZSCORE', k_leases(node), lease) or '0') or 0
    if deadline > now then
      running = running + 1
    else
      redis.call('ZREM', key, member)
    end
  end
  if running > 0 then redis.call('PEXPIRE', key, KEY_FLIGHT_TTL_MS) end
  return running
end

local function key_took(key_id, node, lease, now)
  local key = k_key_flight(key_id)
  redis.call('ZADD', key, now, node .. ' ' .. lease)
  redis.call('PEXPIRE', key, KEY_FLIGHT_TTL_MS)
end
