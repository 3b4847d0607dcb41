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

local model, lease_id, lease_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ticket, queue_max, ticket_ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local family, response_id = ARGV[8] or '', ARGV[9] or ''
local tenant, band, weight = ARGV[13] or '', tonumber(ARGV[14] or '0') or 0, tonumber(ARGV[15] or '1') or 1
local now = now_ms()
local qkey, qalive = k_queue(model), k_queue_alive(model)
-- This request's place in the fair order: its stored tag once queued; for a fresh arrival
-- behind a non-empty queue, the tag it would get (committed only if it queues or is served).
local my_tag, my_start = nil, nil

local function leave_queue(queued)
  if queued > 0 and redis.call('ZREM', qkey, ticket) == 1 then
    redis.call('ZREM', qalive, ticket)
    redis.call('HDEL', k_queue_info(model), ticket)
    -- The next in line may find a slot too (or have to give up); let its replica look.
    if queue_shrank(model) then redis.call('PUBLISH', k_events(), model) end
  end
end

-- The key's own fleet-wide limit comes before any place in the queue: a request that could
-- not run anyway must not hold the head and block other keys.
local limited_key, key_limit = ARGV[16] or '', tonumber(ARGV[17] or '0') or 0
if limited_key ~= '' and key_limit > 0 then
  local running = key_in_flight(limited_key, now)
  if running >= key_limit then
    leave_queue(redis.call('ZCARD', qkey))
    if ARGV[18] == '1' then return {'key_busy', running} end
    return {'key_wait', running}
  end
end

local stored_on = nil
if response_id ~= '' then
  stored_on = redis.call('HGET', k_response(response_id), 'node')
  if not stored_on or tonumber(redis.call('ZSCORE', k_alive(), stored_on) or '0') <= now then
    leave_queue(redis.call('ZCARD', qkey))
    return {'response_gone'}
  end
end

local function refuses(id)
  if family == '' then return false end
  return tonumber(redis.call('ZSCORE', k_unsupported(id), family) or '0') > now
end

local function prune_dead_tickets()
  local dead = redis.call('ZRANGE', qalive, '-inf', now, 'BYSCORE')
  if #dead > 0 then
    redis.call('ZREM', qalive, unpack(dead))
    redis.call('ZREM', qkey, unpack(dead))
    redis.call('HDEL', k_queue_info(model), unpack(dead))
    queue_shrank(model)
  end
end

local queued = redis.call('ZCARD', qkey)
if queued > 0 then
  prune_dead_tickets()
  queued = redis.call('ZCARD', qkey)
end
local my_turn = queued == 0
local stored_tag = nil
if not my_turn then
  stored_tag = redis.call('ZSCORE', qkey, ticket)
  local head = redis.call('ZRANGE', qkey, 0, 0, 'WITHSCORES')
  if stored_tag then
    my_tag = tonumber(stored_tag)
    my_turn = head[1] == ticket
  elseif shed_ticket(model, ticket) then
    return {'shed'}
  else
    my_tag, my_start = fair_tag(model, tenant, band)
    my_turn = my_tag < tonumber(head[2])
  end
end

-- A node may take this request if it is alive, taking requests and not cooling down for the
-- model; returns its routing fields then.
local function usable(id)
  local f = routing_fields(id)
  if f[1] == '1' or f[2] == '1' or not node_alive(id, f[8], now)
      or cooling_down(id, model, f[9], now) then
    return nil
  end
  return f
end

-- A usable node's real state: in-flight count (expired leases pruned) and real score,
-- utilisation from its leases and the floor from its stored entry (`stored`, nil when it is
-- not in the index: then nothing is written for it either).
local function candidate(id, f, stored)
  local inflight = in_flight(id, now)
  local util, maxc = util_of(inflight, f[3])
  local floor = stored and floor_of_score(tonumber(stored)) or 0
  return {id = id, f = f, inflight = inflight, maxc = maxc, util = util, floor = floor,
    score = util * UTIL_UNIT + floor}
end

-- The load index is ordered by stored score, and every stored score is <= its node's real
-- score (lib.lua). Walk it in that order, computing each looked-at node's real score, and
-- stop once the next stored score is >= the best real one seen: every entry further on has
-- a real score at least as high. The walk starts with a rotation among the entries sharing
-- the best stored score (exact ties take turns); in the common case that node is accurate
-- and the walk ends there. An entry whose node is not usable is removed (the next
-- heartbeat re-adds it once eligible); one found off its real score is rewritten to it
-- (lazy repair). At most MAX_LOOKS nodes are looked at per call: then the best real
-- score seen wins, or, with no free slot seen, the request waits as if all were full.
local MAX_LOOKS = 16
local load_key = k_model_load(model)
local any_capable, any_refusing = false, false

local avoid = decode_list(ARGV[10])
local avoided = as_set(avoid)

local function best_candidate()
  local skipped, nskipped = as_set(avoid), #avoid
  local seen, nseen = {}, 0
  local best, looks, first = nil, 0, true
  while looks < MAX_LOOKS do
    local want = 8 + nskipped + nseen
    local raw = redis.call('ZRANGE', load_key, '-inf', '+inf', 'BYSCORE', 'LIMIT', 0, want,
      'WITHSCORES')
    -- Two flat arrays, not a table per entry: Lua allocations are most of a call's cost.
    local ids, scores = {}, {}
    for i = 1, #raw, 2 do
      if not skipped[raw[i]] and not seen[raw[i]] then
        ids[#ids + 1] = raw[i]
        scores[#ids] = tonumber(raw[i + 1])
      end
    end
    if first and #ids > 1 and scores[1] < FULL then
      local pool = 1
      while pool < #ids and scores[pool + 1] == scores[1] do pool = pool + 1 end
      if pool > 1 then
        local at = (redis.call('INCR', k_model_rr(model)) % pool) + 1
        ids[1], ids[at] = ids[at], ids[1]
        scores[1], scores[at] = scores[at], scores[1]
      end
    end
    first = false
    local done = false
    for k = 1, #ids do
      local id, stored = ids[k], scores[k]
      if best ~= nil and stored >= best.score then done = true break end
      looks = looks + 1
      local f = usable(id)
      if not f then
        redis.call('ZREM', load_key, id)
      elseif refuses(id) then
        -- It declined this endpoint family lately: look past it, but leave the index alone
        -- (its other endpoints still route here).
        skipped[id], nskipped, any_refusing = true, nskipped + 1, true
      else
        any_capable = true
        local c = candidate(id, f, stored)
        if c.score ~= stored then write_entry(model, id, c.util, c.floor) end
        seen[id], nseen = true, nseen + 1
        if best == nil or c.score < best.score then best = c end
      end
      if looks >= MAX_LOOKS then done = true break end
    end
    if done or #raw < 2 * want then break end
  end
  if best ~= nil and best.score < FULL then return best end
  return nil
end

-- The pinned node as a candidate, or nil when it cannot take this model now (gone, drained,
-- excluded, no longer serving it, declining this endpoint). A stale index entry is
-- repaired as above.
local function pinned_candidate(id)
  local stored = redis.call('ZSCORE', load_key, id)
  if not stored then return nil end
  local f = usable(id)
  if not f then
    redis.call('ZREM', load_key, id)
    return nil
  end
  if refuses(id) then return nil end
  any_capable = true
  return candidate(id, f, stored)
end

local function grant(c, affinity)
  redis.call('ZADD', k_leases(c.id), now + lease_ttl, lease_id)
  if limited_key ~= '' and key_limit > 0 then key_took(limited_key, c.id, lease_id, now) end
  local inflight = c.inflight + 1
  -- Only this model's entry moves up; the node's other entries stay <= its real score.
  write_entry(model, c.id, (util_of(inflight, c.maxc)), c.floor)
  if my_tag then
    -- Served from the queue (or ahead of it): its tenant's virtual time moves on.
    if not stored_tag then fair_enqueue(model, tenant, band, weight, my_start) end
    fair_served(model, my_tag)
  end
  leave_queue(queued)
  return {'ok', c.id, c.f[4], c.f[5], inflight, c.maxc, affinity,
    c.f[6] or '', c.f[7] or ''}
end

-- A stored response lives on one node: that node or nothing (its liveness was checked
-- above; draining does not stop it answering for what it already holds).
if stored_on then
  if my_turn then
    local f = routing_fields(stored_on)
    local c = candidate(stored_on, f, redis.call('ZSCORE', load_key, stored_on))
    if c.inflight < c.maxc then return grant(c, '') end
  end
  my_turn, any_capable = false, true
end

-- Utilisation of the best stored score (lazily repaired, so a bound, not a verified fact).
local function stored_best_util()
  local head = redis.call('ZRANGE', load_key, 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  return math.floor(math.min(tonumber(head[2]), FULL) / UTIL_UNIT)
end

-- Affinity first: a pinned node that is usable, has a free slot and is within the margin of
-- the best stored score takes the request without the best being verified (the common
-- hit costs a few commands over no affinity). Otherwise the best is verified and the
-- bounded-load rule decides against it, so a pin only ever loses to a real node.
local function choose(pin_keys, margin)
  local pinned = pinned_node(pin_keys)
  if not pinned then return best_candidate(), 'new' end
  -- This request failed on its pinned node: the pin moves (and that node, not looked at,
  -- makes nobody queue).
  if avoided[pinned] then return bounded_choice(nil, best_candidate(), margin) end
  local p = pinned_candidate(pinned)
  if p ~= nil and p.score < FULL then
    local best_util = stored_best_util()
    if best_util == nil or p.util <= best_util + margin then return p, 'hit' end
  end
  local best = best_candidate()
  if best ~= nil and best.id == pinned then return best, 'hit' end
  return bounded_choice(p, best, margin)
end

if my_turn then
  local pin_ttl, margin = tonumber(ARGV[11] or '0') or 0, tonumber(ARGV[12] or '0') or 0
  local pin_keys = {}
  if pin_ttl > 0 then
    for i = 19, #ARGV do pin_keys[#pin_keys + 1] = ARGV[i] end
  end
  local choice, affinity
  if #pin_keys > 0 then
    choice, affinity = choose(pin_keys, margin)
  else
    choice, affinity = best_candidate(), ''
  end
  if choice ~= nil then
    if #pin_keys > 0 then write_pins(pin_keys, choice.id, pin_ttl) end
    return grant(choice, affinity)
  end
end

if not my_turn or any_capable then
  if not stored_tag then
    if queued == 0 then
      fair_reset(model)
      my_tag, my_start = fair_tag(model, tenant, band)
    end
    if queued >= queue_max and not shed_below(model, my_tag, now, ticket_ttl) then
      return {'queue_full', queued}
    end
    fair_enqueue(model, tenant, band, weight, my_start)
    redis.call('ZADD', qkey, string.format('%.0f', my_tag), ticket)
    redis.call('SADD', k_queues_active(), model)
    -- For operators (llm-router fleet queues): who waits, in which band, since when.
    redis.call('HSET', k_queue_info(model), ticket,
      tenant .. ' ' .. band .. ' ' .. string.format('%.0f', now_us()))
  end
  redis.call('ZADD', qalive, now + ticket_ttl, ticket)
  return {'queued', redis.call('ZRANK', qkey, ticket) + 1, string.format('%.0f', my_tag)}
end

-- Nobody can take it. A waiter whose last capable node vanished leaves the queue too.
leave_queue(queued)
if any_refusing then return {'unsupported'} end
local known = redis.call('ZSCORE', k_known(), model)
if known and tonumber(known) >= now - tonumber(ARGV[7]) then return {'no_capable'} end
return {'not_found'}
