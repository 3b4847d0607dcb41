-- The acquire step's helpers: the walk of the load index, the pinned candidate, the grant
-- and leaving the queue. Prepended to acquire.lua only (after lib.lua, affinity.lua and
-- fair.lua). They live here, at library scope, rather than as local functions inside
-- acquire.lua: in a function library a script's body runs once per call, and every local
-- function in it would be a fresh closure (with its upvalues) on every call. What a call
-- knows is passed as one table, `q` (acquire.lua builds it).

-- An empty list or set that nobody writes to (acquire.lua's "no nodes to avoid").
local NO_NODES = {}

local function leave_queue(q)
  if q.queued > 0 and redis.call('ZREM', q.qkey, q.ticket) == 1 then
    redis.call('ZREM', q.qalive, q.ticket)
    redis.call('HDEL', k_queue_info(q.model), q.ticket)
    -- The next in line may find a slot too (or have to give up); let its replica look.
    if queue_shrank(q.model) then redis.call('PUBLISH', k_events(), q.model) end
  end
end

local function prune_dead_tickets(q)
  local dead = redis.call('ZRANGE', q.qalive, '-inf', q.now, 'BYSCORE')
  if #dead > 0 then
    redis.call('ZREM', q.qalive, unpack(dead))
    redis.call('ZREM', q.qkey, unpack(dead))
    redis.call('HDEL', k_queue_info(q.model), unpack(dead))
    queue_shrank(q.model)
  end
end

local function refuses(q, id)
  if q.family == '' then return false end
  return tonumber(redis.call('ZSCORE', k_unsupported(id), q.family) or '0') > q.now
end

-- A node may take this request if it is alive, taking requests and not cooling down for the
-- model; returns its routing fields then.
local function usable(q, id)
  local f = routing_fields(id)
  if f[1] == '1' or f[2] == '1' or not node_alive(id, f[8], q.now)
      or cooling_down(id, q.model, f[9], q.now) then
    return nil
  end
  return f
end

-- A usable node's real state: in-flight count (expired leases pruned) and real score,
-- utilisation from its leases and the floor from its stored entry (`stored`, nil when it is
-- not in the index: then nothing is written for it either).
local function candidate(q, id, f, stored)
  local inflight = in_flight(id, q.now)
  local util, maxc = util_of(inflight, f[3])
  local floor = stored and floor_of_score(tonumber(stored)) or 0
  return {id = id, f = f, inflight = inflight, maxc = maxc, util = util, floor = floor,
    score = util * UTIL_UNIT + floor}
end

-- The load index is ordered by stored score, and every stored score is <= its node's real
-- score (lib.lua). Walk it in that order, computing each looked-at node's real score, and
-- stop once the next stored score is >= the best real one seen: every entry further on has
-- a real score at least as high (real >= stored >= that next stored >= best real), so the
-- walk is exact however few entries it fetched. An entry whose node is not usable is
-- removed (the next heartbeat re-adds it once eligible); one found off its real score is
-- rewritten to it (lazy repair). At most MAX_LOOKS nodes are looked at per call: then the
-- best real score seen wins, or, with no free slot seen, the request waits as if all were
-- full.
--
-- Exact ties take turns: the walk starts at one of the first WINDOW entries sharing the
-- lowest stored score, in rotation. In the common case that node is accurate and the walk
-- ends there, so the first fetch takes two entries with their scores, not a window: the
-- second says whether the first is tied (then the tie's first WINDOW members are read, ids
-- only: their score is known) and, once the first is found accurate, that nothing further
-- on can beat it. Only a walk that goes on fetches a window with scores. With entries to
-- skip (this request's failed nodes) the first fetch is such a window, the skipped taken
-- out before the rotation.
local MAX_LOOKS = 16
local WINDOW = 8

-- The two lowest entries, with the rotation applied: ids and scores as flat arrays.
local function first_entries(q)
  local raw = redis.call('ZRANGE', q.load_key, 0, 1, 'WITHSCORES')
  local ids, scores = {raw[1], raw[3]}, {tonumber(raw[2]), tonumber(raw[4])}
  if #raw == 4 and scores[1] == scores[2] and scores[1] < FULL then
    local tied = redis.call('ZRANGE', q.load_key, raw[2], raw[2], 'BYSCORE', 'LIMIT', 0, WINDOW)
    local at = redis.call('INCR', k_model_rr(q.model)) % #tied + 1
    ids[1], ids[2] = tied[at], tied[at == 1 and 2 or 1]
  end
  return ids, scores, #raw < 4
end

-- A later window: the lowest entries not skipped and not seen yet (the walk removes and
-- rewrites entries as it goes, so it reads from the start again), the rotation among the
-- tied ones applied on the first fetch only.
local function window(q, passed, npassed, rotate)
  local want = WINDOW + npassed
  local raw = redis.call('ZRANGE', q.load_key, 0, want - 1, 'WITHSCORES')
  local ids, scores = {}, {}
  for i = 1, #raw, 2 do
    if not passed[raw[i]] then
      ids[#ids + 1] = raw[i]
      scores[#ids] = tonumber(raw[i + 1])
    end
  end
  if rotate and #ids > 1 and scores[1] < FULL then
    local pool = 1
    while pool < #ids and scores[pool + 1] == scores[1] do pool = pool + 1 end
    if pool > 1 then
      local at = (redis.call('INCR', k_model_rr(q.model)) % pool) + 1
      ids[1], ids[at] = ids[at], ids[1]
      scores[1], scores[at] = scores[at], scores[1]
    end
  end
  return ids, scores, #raw < 2 * want
end

-- `passed`: the entries not to look at again (this request's failed nodes, those declining
-- its endpoint family, those already looked at), `npassed` how many.
local function best_candidate(q)
  local passed, npassed = as_set(q.avoid), #q.avoid
  local best, looks = nil, 0
  local ids, scores, last
  if npassed == 0 then
    ids, scores, last = first_entries(q)
  else
    ids, scores, last = window(q, passed, npassed, true)
  end
  while true do
    local done = false
    for k = 1, #ids do
      local id, stored = ids[k], scores[k]
      if best ~= nil and stored >= best.score then done = true break end
      if not passed[id] then
        looks = looks + 1
        local f = usable(q, id)
        if not f then
          redis.call('ZREM', q.load_key, id)
        elseif refuses(q, id) then
          -- It declined this endpoint family lately: look past it, but leave the index
          -- alone (its other endpoints still route here).
          passed[id], npassed, q.any_refusing = true, npassed + 1, true
        else
          q.any_capable = true
          local c = candidate(q, id, f, stored)
          if c.score ~= stored then write_entry(q.model, id, c.util, c.floor) end
          passed[id], npassed = true, npassed + 1
          if best == nil or c.score < best.score then best = c end
        end
        if looks >= MAX_LOOKS then done = true break end
      end
    end
    if done or last then break end
    ids, scores, last = window(q, passed, npassed, false)
  end
  if best ~= nil and best.score < FULL then return best end
  return nil
end

-- The pinned node as a candidate, or nil when it cannot take this model now (gone, drained,
-- excluded, no longer serving it, declining this endpoint). A stale index entry is
-- repaired as above.
local function pinned_candidate(q, id)
  local stored = redis.call('ZSCORE', q.load_key, id)
  if not stored then return nil end
  local f = usable(q, id)
  if not f then
    redis.call('ZREM', q.load_key, id)
    return nil
  end
  if refuses(q, id) then return nil end
  q.any_capable = true
  return candidate(q, id, f, stored)
end

local function grant(q, c, affinity)
  local now = q.now
  redis.call('ZADD', k_leases(c.id), now + q.lease_ttl, q.lease_id)
  if q.limited_key ~= '' and q.key_limit > 0 then key_took(q.limited_key, c.id, q.lease_id, now) end
  local inflight = c.inflight + 1
  -- Only this model's entry moves up; the node's other entries stay <= its real score.
  write_entry(q.model, c.id, (util_of(inflight, c.maxc)), c.floor)
  if q.my_tag then
    -- Served from the queue (or ahead of it): its tenant's virtual time moves on.
    if not q.stored_tag then fair_enqueue(q.model, q.tenant, q.band, q.weight, q.my_start) end
    fair_served(q.model, q.my_tag)
  end
  leave_queue(q)
  return {'ok', c.id, c.f[4], c.f[5], inflight, c.maxc, affinity,
    c.f[6] or '', c.f[7] or ''}
end

-- Utilisation of the best stored score (lazily repaired, so a bound, not a verified fact).
local function stored_best_util(q)
  local head = redis.call('ZRANGE', q.load_key, 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  return math.floor(math.min(tonumber(head[2]), FULL) / UTIL_UNIT)
end

-- Affinity first: a pinned node that is usable, has a free slot and is within the margin of
-- the best stored score takes the request without the best being verified (the common
-- hit costs a few commands over no affinity). Otherwise the best is verified and the
-- bounded-load rule decides against it, so a pin only ever loses to a real node.
local function choose(q, pin_keys, margin)
  local pinned = pinned_node(pin_keys)
  if not pinned then return best_candidate(q), 'new' end
  -- This request failed on its pinned node: the pin moves (and that node, not looked at,
  -- makes nobody queue).
  if q.avoided[pinned] then return bounded_choice(nil, best_candidate(q), margin) end
  local p = pinned_candidate(q, pinned)
  if p ~= nil and p.score < FULL then
    local best_util = stored_best_util(q)
    if best_util == nil or p.util <= best_util + margin then return p, 'hit' end
  end
  local best = best_candidate(q)
  if best ~= nil and best.id == pinned then return best, 'hit' end
  return bounded_choice(p, best, margin)
end
