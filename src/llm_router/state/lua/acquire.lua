-- Pick a node for a request and lease one of its slots, in one atomic step; or queue.
--
-- KEYS[1]  fleet base
-- ARGV[1]  model id
-- ARGV[2]  lease id (unique per attempt)
-- ARGV[3]  lease TTL (ms)
-- ARGV[4]  queue ticket of this request (a fresh arrival's ticket is not in the queue yet)
-- ARGV[5]  queue_max: a fresh arrival that finds no slot is queued unless this many wait
-- ARGV[6]  ticket TTL (ms): a ticket its waiter stops renewing dies after this
-- ARGV[7]  forget-after (ms): how long a model stays "known" after its last advertisement
-- ARGV[8]  endpoint family, or "": nodes that recently declined it (404/405/501) are skipped
-- ARGV[9]  stored response id, or "": the request must go to the node that created it, and
--          only there (a hard constraint, not a preference)
-- ARGV[10] JSON list of node ids this request already failed on, or "": never picked for
--          it (a pin on one of them moves), and not repaired either (they are fine for
--          everyone else)
-- ARGV[11] affinity pin TTL (ms); 0 or absent: affinity off for this request
-- ARGV[12] affinity margin, in utilisation units (1e6 = a whole node)
-- ARGV[13] tenant of the request's key
-- ARGV[14] priority band, 0..9 (9 is served first)
-- ARGV[15] the tenant's weight within its band, 1..1000
-- ARGV[16] key id whose requests in flight are limited fleet-wide, or ""
-- ARGV[17] that limit (max_in_flight)
-- ARGV[18] "1": over the limit, refuse (else wait outside the queue)
-- ARGV[19..] affinity keys, most specific first (none: no affinity)
-- Returns
--   {"ok", node_id, ip_address, node_api_port, in_flight, max_concurrency, affinity, scheme,
--    secret}
--       affinity: "" (no keys), "new" (no pin), "hit", or "moved:unavailable|full|loaded"
--       scheme and secret: "" for a record without them
--   {"queued", position, order}        ticket ARGV[4] is (now) in the queue; `order` is its
--                                      place tag (smaller is served sooner; fixed once queued)
--   {"queue_full", length}             no room, and nobody queued ranks below this request
--   {"shed"}                           ARGV[4] was queued but a higher band took its place
--   {"key_busy", n} / {"key_wait", n}  the key has n >= max_in_flight requests in flight
--   {"no_capable"}                     known model, no node that could take it at all
--   {"not_found"}                      no node advertised the model within forget-after
--   {"unsupported"}                    every capable node declined this endpoint family
--   {"response_gone"}                  ARGV[9] is unknown, or its node is no longer alive
--
-- Order: while anyone is queued for the model, only the head of the queue may take a slot,
-- or a fresh arrival whose place tag would put it ahead of the head. The tag (fair.lua)
-- orders by band, then by the tenant's start-time-fair virtual time, then FIFO within the
-- tenant. Dead tickets (waiter's replica gone) are pruned first so they never block the
-- queue for longer than their TTL. The common case, nobody queued, reads no fairness state.

local now = now_ms()
local model = ARGV[1]
-- Read only: the common empty list is one shared table, not two new ones per call.
local avoid = ARGV[10] ~= '' and decode_list(ARGV[10]) or NO_NODES
local avoided = #avoid > 0 and as_set(avoid) or NO_NODES
-- Everything the helpers (walk.lua) need of this call, in one table.
local q = {
  model = model, lease_id = ARGV[2], lease_ttl = tonumber(ARGV[3]), ticket = ARGV[4],
  now = now, family = ARGV[8] or '', qkey = k_queue(model), qalive = k_queue_alive(model),
  load_key = k_model_load(model), queued = 0,
  tenant = ARGV[13] or '', band = tonumber(ARGV[14] or '0') or 0,
  weight = tonumber(ARGV[15] or '1') or 1,
  limited_key = ARGV[16] or '', key_limit = tonumber(ARGV[17] or '0') or 0,
  avoid = avoid, avoided = avoided, any_capable = false, any_refusing = false,
  -- This request's place in the fair order: its stored tag once queued; for a fresh
  -- arrival behind a non-empty queue, the tag it would get (committed only if it queues or
  -- is served). my_start, stored_tag: set below.
  my_tag = nil,
}
local response_id = ARGV[9] or ''

-- The key's own fleet-wide limit comes before any place in the queue: a request that could
-- not run anyway must not hold the head and block other keys.
if q.limited_key ~= '' and q.key_limit > 0 then
  local running = key_in_flight(q.limited_key, now)
  if running >= q.key_limit then
    q.queued = redis.call('ZCARD', q.qkey)
    leave_queue(q)
    if ARGV[18] == '1' then return {'key_busy', running} end
    return {'key_wait', running}
  end
end

local stored_on = nil
if response_id ~= '' then
  stored_on = redis.call('HGET', k_response(response_id), 'node')
  if not stored_on or tonumber(redis.call('ZSCORE', k_alive(), stored_on) or '0') <= now then
    q.queued = redis.call('ZCARD', q.qkey)
    leave_queue(q)
    return {'response_gone'}
  end
end

local queued = redis.call('ZCARD', q.qkey)
if queued > 0 then
  prune_dead_tickets(q)
  queued = redis.call('ZCARD', q.qkey)
end
q.queued = queued
local my_turn = queued == 0
if not my_turn then
  local stored_tag = redis.call('ZSCORE', q.qkey, q.ticket)
  local head = redis.call('ZRANGE', q.qkey, 0, 0, 'WITHSCORES')
  q.stored_tag = stored_tag
  if stored_tag then
    q.my_tag = tonumber(stored_tag)
    my_turn = head[1] == q.ticket
  elseif shed_ticket(model, q.ticket) then
    return {'shed'}
  else
    q.my_tag, q.my_start = fair_tag(model, q.tenant, q.band)
    my_turn = q.my_tag < tonumber(head[2])
  end
end

-- A stored response lives on one node: that node or nothing (its liveness was checked
-- above; draining does not stop it answering for what it already holds).
if stored_on then
  if my_turn then
    local f = routing_fields(stored_on)
    local c = candidate(q, stored_on, f, redis.call('ZSCORE', q.load_key, stored_on))
    if c.inflight < c.maxc then return grant(q, c, '') end
  end
  my_turn, q.any_capable = false, true
end

if my_turn then
  local pin_ttl = tonumber(ARGV[11] or '0') or 0
  if pin_ttl > 0 and #ARGV >= 19 then
    local pin_keys = {}
    for i = 19, #ARGV do pin_keys[#pin_keys + 1] = ARGV[i] end
    local choice, affinity = choose(q, pin_keys, tonumber(ARGV[12] or '0') or 0)
    if choice ~= nil then
      write_pins(pin_keys, choice.id, pin_ttl)
      return grant(q, choice, affinity)
    end
  else
    local choice = best_candidate(q)
    if choice ~= nil then return grant(q, choice, '') end
  end
end

if not my_turn or q.any_capable then
  local my_tag, my_start = q.my_tag, q.my_start
  if not q.stored_tag then
    if queued == 0 then
      fair_reset(model)
      my_tag, my_start = fair_tag(model, q.tenant, q.band)
    end
    if queued >= tonumber(ARGV[5]) and not shed_below(model, my_tag, now, tonumber(ARGV[6])) then
      return {'queue_full', queued}
    end
    fair_enqueue(model, q.tenant, q.band, q.weight, my_start)
    redis.call('ZADD', q.qkey, string.format('%.0f', my_tag), q.ticket)
    redis.call('SADD', k_queues_active(), model)
    -- For operators (llm-router fleet queues): who waits, in which band, since when.
    redis.call('HSET', k_queue_info(model), q.ticket,
      q.tenant .. ' ' .. q.band .. ' ' .. string.format('%.0f', now_us()))
  end
  redis.call('ZADD', q.qalive, now + tonumber(ARGV[6]), q.ticket)
  return {'queued', redis.call('ZRANK', q.qkey, q.ticket) + 1, string.format('%.0f', my_tag)}
end

-- Nobody can take it. A waiter whose last capable node vanished leaves the queue too.
leave_queue(q)
if q.any_refusing then return {'unsupported'} end
local known = redis.call('ZSCORE', k_known(), model)
if known and tonumber(known) >= now - tonumber(ARGV[7]) then return {'no_capable'} end
return {'not_found'}
