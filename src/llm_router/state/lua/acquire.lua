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
-- Returns
--   {"ok", node_id, ip_address, node_api_port, in_flight, max_concurrency}
--   {"queued", position, arrival_us}   ticket ARGV[4] is (now) in the queue
--   {"queue_full", length}
--   {"no_capable"}                     known model, no node that could take it at all
--   {"not_found"}                      no node advertised the model within forget-after
--
-- FIFO: while anyone is queued for the model, only the head of the queue may take a slot;
-- fresh arrivals join the back. Dead tickets (waiter's replica gone) are pruned first so
-- they never block the queue for longer than their TTL.

local model, lease_id, lease_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ticket, queue_max, ticket_ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local qkey, qalive = k_queue(model), k_queue_alive(model)

local function prune_dead_tickets()
  local dead = redis.call('ZRANGE', qalive, '-inf', now, 'BYSCORE')
  if #dead > 0 then
    redis.call('ZREM', qalive, unpack(dead))
    redis.call('ZREM', qkey, unpack(dead))
  end
end

local queued = redis.call('ZCARD', qkey)
if queued > 0 then
  prune_dead_tickets()
  queued = redis.call('ZCARD', qkey)
end
local my_turn = queued == 0
if not my_turn then
  my_turn = redis.call('ZRANGE', qkey, 0, 0)[1] == ticket
end

-- Walk the load index from the least loaded node. Entries that turn out dead, draining,
-- initializing or excluded are removed (lazy repair; the next heartbeat re-adds them when
-- they are eligible again); stale scores are corrected from the node's real leases.
local load_key = k_model_load(model)
local best, best_score, ties = nil, nil, {}
local any_capable = false
local offset, batch, done = 0, 8, false
while my_turn and not done and offset < 64 do
  local entries = redis.call('ZRANGE', load_key, '-inf', '+inf', 'BYSCORE', 'LIMIT', offset, batch,
    'WITHSCORES')
  if #entries < batch * 2 then done = true end
  for i = 1, #entries, 2 do
    local id, stored = entries[i], tonumber(entries[i + 1])
    -- Sorted by stored score: past the best real score (or with enough equals to rotate
    -- among) nothing further down can win.
    if best_score ~= nil and (stored > best_score or #ties >= 8) then
      done = true
      break
    end
    local alive_until = tonumber(redis.call('ZSCORE', k_alive(), id) or '0')
    if alive_until <= now or not eligible(id, model, now) then
      redis.call('ZREM', load_key, id)
      offset = offset - 1
    else
      any_capable = true
      local score = routing_score(id, in_flight(id, now))
      if score ~= stored then update_scores(id, score) end
      if score < FULL then
        if best_score == nil or score < best_score then
          best, best_score, ties = id, score, {id}
        elseif score == best_score then
          ties[#ties + 1] = id
        end
      end
    end
    offset = offset + 1
  end
end

if best ~= nil then
  if #ties > 1 then
    local turn = redis.call('INCR', k_model_rr(model))
    best = ties[(turn % #ties) + 1]
  end
  redis.call('ZADD', k_leases(best), now + lease_ttl, lease_id)
  -- Every lease has the same TTL, so this one is the last to expire: the key goes with it
  -- even if the node and every holder vanish.
  redis.call('PEXPIRE', k_leases(best), lease_ttl)
  local inflight = redis.call('ZCARD', k_leases(best))
  local score, maxc = routing_score(best, inflight)
  update_scores(best, score)
  if queued > 0 and redis.call('ZREM', qkey, ticket) == 1 then
    redis.call('ZREM', qalive, ticket)
    -- The next in line may find a slot too; let its replica look.
    if redis.call('ZCARD', qkey) > 0 then redis.call('PUBLISH', k_events(), model) end
  end
  local addr = redis.call('HMGET', k_node(best), 'ip_address', 'node_api_port')
  return {'ok', best, addr[1], addr[2], inflight, maxc}
end

if not my_turn or any_capable then
  local arrival = redis.call('ZSCORE', qkey, ticket)
  if not arrival then
    if queued >= queue_max then return {'queue_full', queued} end
    arrival = now_us()
    redis.call('ZADD', qkey, arrival, ticket)
  end
  redis.call('ZADD', qalive, now + ticket_ttl, ticket)
  return {'queued', redis.call('ZRANK', qkey, ticket) + 1, string.format('%.0f', tonumber(arrival))}
end

-- Nobody can take it. A waiter whose last capable node vanished leaves the queue too.
if queued > 0 and redis.call('ZREM', qkey, ticket) == 1 then
  redis.call('ZREM', qalive, ticket)
  if redis.call('ZCARD', qkey) > 0 then redis.call('PUBLISH', k_events(), model) end
end
local known = redis.call('ZSCORE', k_known(), model)
if known and tonumber(known) >= now - tonumber(ARGV[7]) then return {'no_capable'} end
return {'not_found'}
