-- Shared helpers, prepended to every script by scripts.py.
--
-- KEYS[1]  the fleet base, e.g. "{llmr}:" — every key a script touches starts with it, so
--          all of them hash to one Cluster slot and may be built inside the script.
--
-- Times are milliseconds since the epoch on the Redis clock (TIME), never a replica's.
-- A node's routing score in the load index of one model packs, most significant first:
--   utilisation (in-flight / max_concurrency, 0..1e6)        * 1e9
--   + cold (1 when the node reports loaded_models without it)  * 1e8
--   + runtime pressure (runtime_load: waiting + kv use, 0..9)  * 1e7
--   + capability gap (9999 - gpu_capability_score, 0..9999)    * 1e2
--   + latency band (average response time in doubling bands from 100 ms, 0..7)
-- so ZRANGE BYSCORE on model:<m>:load yields the least loaded node first and, among equally
-- loaded ones, a warm one before one that would have to load the model, then the least
-- pressed, most capable and fastest; every score >= FULL means "no free slot". The fields
-- never overlap and the largest score stays far below 2^53, so doubles hold them exactly.
--
-- Everything below utilisation is the entry's floor: it changes only with a heartbeat, which
-- keeps it exact (stored score mod 1e9 == floor). Utilisation changes with every request,
-- so it is written only where it must be (docs/scheduling.md, "Scores"): the invariant is
-- that every stored score is <= the node's real score for that model. A grant writes the
-- chosen model's entry and notes the model in raised:<node> (model -> floor); a release
-- rewrites only the raised entries; every other entry sits at its floor, which is <= real.

local BASE = KEYS[1]
local FULL = 1e15
local UTIL_UNIT = 1e9
local COLD = 1e8
-- models:known is refreshed by a node's heartbeat at most this often (it is read against
-- a forget-after of hours, so minutes of lag cost nothing).
local KNOWN_REFRESH_MS = 300000
-- Nodes whose liveness lapsed are taken out of their models' sets by heartbeats, this many
-- per call (prune sweeps too).
local SWEEP_BATCH = 16

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function k_node(id) return BASE .. 'node:' .. id end
local function k_node_metrics(id) return BASE .. 'node-metrics:' .. id end
local function k_alive() return BASE .. 'nodes:alive' end
local function k_index() return BASE .. 'nodes:index' end
local function k_drained() return BASE .. 'nodes:drained' end
local function k_key_identities(key_id) return BASE .. 'nodekey:' .. key_id .. ':identities' end
local function k_model_nodes(m) return BASE .. 'model:' .. m .. ':nodes' end
local function k_model_load(m) return BASE .. 'model:' .. m .. ':load' end
local function k_model_rr(m) return BASE .. 'model:' .. m .. ':rr' end
local function k_known() return BASE .. 'models:known' end
local function k_created() return BASE .. 'models:created' end
local function k_models_version() return BASE .. 'models:version' end
local function k_leases(id) return BASE .. 'leases:' .. id end
local function k_queue(m) return BASE .. 'queue:' .. m end
local function k_queue_alive(m) return BASE .. 'queue-alive:' .. m end
local function k_queue_fair(m) return BASE .. 'queue-fair:' .. m end
local function k_queue_shed(m) return BASE .. 'queue-shed:' .. m end
local function k_queue_info(m) return BASE .. 'queue-info:' .. m end
local function k_key_flight(key_id) return BASE .. 'key-flight:' .. key_id end
local function k_excluded(id) return BASE .. 'excluded:' .. id end
local function k_failures(id, m) return BASE .. 'failures:' .. id .. ':' .. m end
local function k_events() return BASE .. 'events:capacity' end
local function k_unsupported(id) return BASE .. 'unsupported:' .. id end
local function k_response(rid) return BASE .. 'response:' .. rid end
local function k_raised(id) return BASE .. 'raised:' .. id end
local function k_queues_active() return BASE .. 'queues:active' end
local function k_swept() return BASE .. 'nodes:swept' end

-- Put `member` in the sorted set `key` until `until_ms`, drop what has ended, and let the
-- key expire with its last member: nothing needs a live replica to clean it up.
local function cool_down(key, member, until_ms, now)
  redis.call('ZADD', key, until_ms, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('PEXPIREAT', key, redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
end

-- /v1/models is cached on each replica under this stamp: every change to which live
-- node executes which model moves it. A node's going offline by itself does not (no
-- script runs then): models_stamp.lua counts the nodes that lapsed instead.
local function models_changed()
  redis.call('INCR', k_models_version())
end


-- An empty argument ("" from a replica) is the common case: no pcall'd error for it.
local function decode_list(raw)
  if not raw or raw == '' then return {} end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return {}
end

local function as_set(list)
  local set = {}
  for _, v in ipairs(list) do set[v] = true end
  return set
end

-- HMGET into a table keyed by field name (absent fields are nil).
local function hmget_named(key, names)
  local raw = redis.call('HMGET', key, unpack(names))
  local out = {}
  for i, name in ipairs(names) do
    if raw[i] then out[name] = raw[i] end
  end
  return out
end

local function util_of(inflight, maxc)
  maxc = tonumber(maxc) or 1
  if maxc < 1 then maxc = 1 end
  return math.floor(math.min(inflight, maxc) * 1000000 / maxc), maxc
end

-- The floor of an entry: its stored score without utilisation (exact by the invariant).
local function floor_of_score(stored)
  return stored % UTIL_UNIT
end

-- Rewrite every raised entry of the node to its real score; at utilisation 0 the entries
-- equal their floors and nothing is raised any more. Entries the node left meanwhile
-- (exclusion, drain, a model removed) are not put back: XX.
local function rescore_raised(id, inflight, maxc)
  if not maxc then maxc = redis.call('HGET', k_node(id), 'max_concurrency') end
  local util = util_of(inflight, maxc)
  local raised = redis.call('HGETALL', k_raised(id))
  for i = 1, #raised, 2 do
    redis.call('ZADD', k_model_load(raised[i]), 'XX', util * UTIL_UNIT + tonumber(raised[i + 1]), id)
  end
  if util == 0 and #raised > 0 then redis.call('DEL', k_raised(id)) end
end

-- Drop leases whose deadline passed (their replica died or stopped renewing) and count
-- the rest: the node's true in-flight count. Expired leases lower the real score, so the
-- raised entries come down with them (only raised entries can sit above real).
local function in_flight(id, now)
  local key = k_leases(id)
  local expired = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if expired > 0 then rescore_raised(id, count, nil) end
  return count
end

-- Raise (or repair) one entry to the score just computed for it, and remember that it
-- sits above its floor so that the node's next release brings it down.
local function write_entry(m, id, util, floor)
  redis.call('ZADD', k_model_load(m), 'XX', util * UTIL_UNIT + floor, id)
  if util > 0 then redis.call('HSET', k_raised(id), m, floor) end
end

-- The fields the request path needs, read with one HMGET: draining, initializing,
-- max_concurrency, ip_address, node_api_port, scheme, node_secret, alive_until, excl_next.
-- scheme and secret ride along so that the replica can reach the node (https or not) and
-- present its secret without a second read; alive_until and excl_next spare the usual
-- node a ZSCORE on nodes:alive and one on its cool-downs (node_alive, cooling_down).
-- Nothing here is decoded: the score's floor comes from the index itself.
local function routing_fields(id)
  return redis.call('HMGET', k_node(id), 'draining', 'initializing', 'max_concurrency',
    'ip_address', 'node_api_port', 'scheme', 'node_secret', 'alive_until', 'excl_next')
end

-- Whether the node's liveness deadline lies after `now`. The node hash's alive_until is
-- written by the same script calls that write nodes:alive, so it is never later than the
-- deadline there (a replica of an older version writes only nodes:alive): a copy after
-- `now` is the answer; anything else is checked against nodes:alive itself.
local function node_alive(id, copy, now)
  if (tonumber(copy or '') or 0) > now then return true end
  return tonumber(redis.call('ZSCORE', k_alive(), id) or '0') > now
end

-- Whether (node, model) is cooling down. Every cool-down written sets excl_next on the
-- node hash and only a rebuild that finds none left clears it: without it, nothing to read.
local function cooling_down(id, m, excl_next, now)
  if not excl_next then return false end
  return tonumber(redis.call('ZSCORE', k_excluded(id), m) or '0') > now
end

-- What the heartbeat and the membership rebuild read of a node, by name.
local STATE_FIELDS = {'draining', 'initializing', 'max_concurrency', 'gpu_capability_score',
  'average_response_time_ms', 'executable_models', 'loaded_models', 'runtime_load',
  'runtime_status', 'floor_base', 'routable', 'known_at', 'gpu_backend', 'listed_backend',
  'listed_serving', 'excl_next', 'models'}

local function node_state(id)
  return hmget_named(k_node(id), STATE_FIELDS)
end

-- What a heartbeat reads, once: the token to check, the liveness copy and STATE_FIELDS
-- (spelt out: a library is loaded where ipairs and unpack may not exist yet).
local HEARTBEAT_FIELDS = {'token_hash', 'alive_until', 'draining', 'initializing',
  'max_concurrency', 'gpu_capability_score', 'average_response_time_ms', 'executable_models',
  'loaded_models', 'runtime_load', 'runtime_status', 'floor_base', 'routable', 'known_at',
  'gpu_backend', 'listed_backend', 'listed_serving', 'excl_next', 'models'}

-- What the runtime says about its own queue and memory, folded into 0..9: requests waiting
-- inside it, plus its KV cache use in fifths. Absent or unreadable: 0 (no opinion).
local function runtime_pressure(raw)
  if not raw then return 0 end
  local ok, load = pcall(cjson.decode, raw)
  if not ok or type(load) ~= 'table' then return 0 end
  local waiting = tonumber(load['waiting']) or 0
  local kv = tonumber(load['kv_cache_usage']) or 0
  local p = math.max(waiting, 0) + math.floor(math.min(math.max(kv, 0), 1) * 5)
  return math.min(math.floor(p), 9)
end

-- Average response time in doubling bands: < 100 ms is 0, 100-199 is 1, 200-399 is 2, ...,
-- 6400 ms and over is 7. Coarse on purpose: a band change rewrites every entry of the node.
local function latency_band(ms)
  local band, edge = 0, 100
  while ms >= edge and band < 7 do band, edge = band + 1, edge * 2 end
  return band
end

-- Runtime pressure moves the floor only when it moved by 2 or more from the value in force
-- (the digit floor_base holds), or fell back to 0: a queue that jitters by one request
-- (0,1,0,1 or 3,4,3) would otherwise rewrite every model's entry on every beat. A band of 2
-- rather than "held for 2 beats" because it needs no state beyond floor_base and still
-- reacts to a real change on its first beat; an idle runtime is always ranked as idle.
local PRESSURE_UNIT = 1e7
local function pressure_in_force(p, applied_base)
  if p == 0 or not applied_base then return p end
  local held = math.floor(applied_base / PRESSURE_UNIT) % 10
  if math.abs(p - held) < 2 then return held end
  return p
end

-- The node's floor without the per-model warm bit (s.floor_base: the one in force).
local function base_floor(s)
  local cap = math.floor(math.min(math.max(tonumber(s.gpu_capability_score) or 0, 0), 9999))
  local lat = math.min(math.max(tonumber(s.average_response_time_ms) or 0, 0), 9999)
  local p = pressure_in_force(runtime_pressure(s.runtime_load), tonumber(s.floor_base))
  return p * PRESSURE_UNIT + (9999 - cap) * 1e2 + latency_band(lat)
end

-- Models the node holds in memory, as a set; nil when it does not say (then every model
-- counts as warm: no report is no reason to avoid a node).
local function warm_of(raw)
  if not raw then return nil end
  return as_set(decode_list(raw))
end

local function model_floor(base, warm, m)
  if warm == nil or warm[m] then return base end
  return base + COLD
end

-- Models of this node in cool-down right now, as a set.
local function excluded_now(id, now)
  local set = {}
  for _, m in ipairs(redis.call('ZRANGE', k_excluded(id), '(' .. now, '+inf', 'BYSCORE')) do
    set[m] = true
  end
  return set
end

-- A node serves only while its runtime answers (runtime_status "ready"). A node that never
-- reported a runtime status (an agent older than the field) is taken at its word.
local function serving_status(s)
  return (not s) or s == '' or s == 'ready'
end

local function is_routable(s)
  return serving_status(s.runtime_status) and s.draining ~= '1' and s.initializing ~= '1'
end

-- Rebuild the node's entries in the load index of each of its models (in or out, floor
-- exact, raised entries at their real score) and what the heartbeat compares against to
-- tell a change: floor_base, routable, and excl_next (the next cool-down to end, when the
-- pair must come back). O(models): only on changes (drain, registration, a changed floor).
local function rebuild_load(id, now, s)
  s = s or node_state(id)
  local models = decode_list(s.executable_models)
  local routable = is_routable(s)
  local excluded = excluded_now(id, now)
  local warm = warm_of(s.loaded_models)
  local base = base_floor(s)
  local util = util_of(in_flight(id, now), s.max_concurrency)
  local raised = {}
  local old = redis.call('HGETALL', k_raised(id))
  for i = 1, #old, 2 do raised[old[i]] = true end
  local keep = {}
  for _, m in ipairs(models) do
    if not routable or excluded[m] then
      redis.call('ZREM', k_model_load(m), id)
    else
      local fl = model_floor(base, warm, m)
      if util > 0 and raised[m] then
        redis.call('ZADD', k_model_load(m), util * UTIL_UNIT + fl, id)
        keep[#keep + 1] = m
        keep[#keep + 1] = fl
      else
        redis.call('ZADD', k_model_load(m), fl, id)
      end
    end
  end
  redis.call('DEL', k_raised(id))
  if #keep > 0 then redis.call('HSET', k_raised(id), unpack(keep)) end
  local nxt = redis.call('ZRANGE', k_excluded(id), '(' .. now, '+inf', 'BYSCORE', 'LIMIT', 0, 1,
    'WITHSCORES')[2]
  redis.call('HSET', k_node(id), 'floor_base', base, 'routable', routable and '1' or '0')
  if nxt then
    redis.call('HSET', k_node(id), 'excl_next', nxt)
  else
    redis.call('HDEL', k_node(id), 'excl_next')
  end
end

local function sync_load_membership(id, now)
  rebuild_load(id, now, nil)
end

-- Tell waiting replicas that capacity may be free on this node, for the models somebody
-- is queued on that the node can execute: the intersection of queues:active (models with a
-- non-empty queue) and the node's models, walked from the smaller side. The common,
-- unqueued path is one SCARD. `woken` dedupes models within one script call.
local WAKE_SCAN = 16
local function wake_for_node(id, woken)
  local active = k_queues_active()
  local n = redis.call('SCARD', active)
  if n == 0 then return end
  local models
  if n <= WAKE_SCAN then
    models = redis.call('SMEMBERS', active)
  else
    models = decode_list(redis.call('HGET', k_node(id), 'executable_models'))
  end
  for _, m in ipairs(models) do
    if not woken[m] and (n <= WAKE_SCAN or redis.call('SISMEMBER', active, m) == 1)
        and redis.call('ZSCORE', k_model_nodes(m), id) then
      woken[m] = true
      if redis.call('EXISTS', k_queue(m)) == 1 then
        redis.call('PUBLISH', k_events(), m)
      else
        redis.call('SREM', active, m)  -- emptied by a path that did not say so: heal
      end
    end
  end
end

-- The queue of `m` lost a ticket: forget it in queues:active once it is empty.
local function queue_shrank(m)
  if redis.call('EXISTS', k_queue(m)) == 0 then
    redis.call('SREM', k_queues_active(), m)
    return false
  end
  return true
end

-- Put (node, model) in cool-down until `until_ms` and out of the model's load index. The
-- heartbeat puts the pair back once the cool-down ended (excl_next says when to look).
local function exclude_pair(id, model, until_ms, now)
  cool_down(k_excluded(id), model, until_ms, now)
  redis.call('ZREM', k_model_load(model), id)
  local nxt = tonumber(redis.call('HGET', k_node(id), 'excl_next') or '')
  if not nxt or until_ms < nxt then redis.call('HSET', k_node(id), 'excl_next', until_ms) end
end

-- End one lease: free its slot, let `on_node(id, now, what)` record what the attempt left
-- (exclusions, refusals, a response id) if the node still exists (nil: nothing to record),
-- bring the node's raised entries down to its new real score and wake replicas queued on
-- its models (each model once per script call: `woken` is shared by the caller). Returns
-- the node's in-flight count.
-- Leases past their deadline are only counted out here, not removed: every raised entry is
-- rewritten from the live count anyway, and the node's next heartbeat (or a walk that looks
-- at it) prunes them. One ZCOUNT instead of ZREMRANGEBYSCORE and ZCARD on every release.
local function end_lease(id, lease_id, now, woken, on_node, what)
  local key = k_leases(id)
  redis.call('ZREM', key, lease_id)
  local inflight = redis.call('ZCOUNT', key, '(' .. now, '+inf')
  local maxc = redis.call('HGET', k_node(id), 'max_concurrency')
  if not maxc then return inflight end  -- the node was removed meanwhile
  if on_node then on_node(id, now, what) end
  rescore_raised(id, inflight, maxc)
  wake_for_node(id, woken)
  return inflight
end

-- What release.lua records of an ended attempt (`a`: exclude, cooldown, refused,
-- response_id, response_model, response_ttl), at library scope so that a release builds no
-- closure per lease; most releases have nothing to record and pass none.
local function record_attempt(id, now, a)
  if a.exclude ~= '' then exclude_pair(id, a.exclude, now + a.cooldown, now) end
  if a.refused ~= '' then cool_down(k_unsupported(id), a.refused, now + a.cooldown, now) end
  if a.response_id ~= '' then
    local key = k_response(a.response_id)
    redis.call('HSET', key, 'node', id, 'model', a.response_model)
    redis.call('PEXPIRE', key, a.response_ttl)
  end
end

local function node_models(id)
  return decode_list(redis.call('HGET', k_node(id), 'executable_models'))
end

local function mark_known(models, now)
  for _, m in ipairs(models) do
    -- ZADD answers 1 only for a model the fleet did not know yet.
    if redis.call('ZADD', k_known(), now, m) == 1 then
      redis.call('HSETNX', k_created(), m, math.floor(now / 1000))
    end
  end
end

local function refresh_known(id, models, installed_raw, now)
  mark_known(models, now)
  mark_known(decode_list(installed_raw), now)
  redis.call('HSET', k_node(id), 'known_at', now)
end

-- Take nodes whose liveness lapsed since the last sweep out of their models' node sets and
-- load indexes, SWEEP_BATCH (plus ties) at a time. nodes:swept is how far it got: a node
-- whose deadline lies between it and now has lapsed but is still listed (list_models
-- subtracts those). A node that comes back re-adds everything (refresh_liveness).
local function sweep_lapsed(now, batch)
  local since = redis.call('GET', k_swept()) or '0'
  local lapsed = redis.call('ZRANGE', k_alive(), '(' .. since, now, 'BYSCORE', 'LIMIT', 0,
    batch, 'WITHSCORES')
  if #lapsed == 0 then return end
  local upto = now
  if #lapsed == 2 * batch then
    upto = lapsed[#lapsed]
    local ties = redis.call('ZRANGE', k_alive(), upto, upto, 'BYSCORE')
    for _, id in ipairs(ties) do
      lapsed[#lapsed + 1] = id
      lapsed[#lapsed + 1] = upto
    end
  end
  for i = 1, #lapsed, 2 do
    local id = lapsed[i]
    for _, m in ipairs(node_models(id)) do
      redis.call('ZREM', k_model_nodes(m), id)
      redis.call('ZREM', k_model_load(m), id)
    end
  end
  redis.call('SET', k_swept(), upto)
end

-- Record liveness and the executable set of a node. `new_json` is the set as the JSON list
-- the replica sent (stored verbatim: cjson would turn an empty list into "{}"), nil keeps
-- the stored set. `old` holds what the node hash said before this call's writes
-- (loaded_models, max_concurrency, models, alive_until), nil to rebuild everything
-- (registration). `s` is the node's state as it stands now (STATE_FIELDS, with this call's
-- writes): a heartbeat read it before its own HSET and wrote alive_until there; nil reads
-- it here and writes alive_until (the copy node_alive reads).
--
-- A heartbeat that changes nothing writes liveness and the node hash, decodes no list and
-- touches no per-model key. A changed executable set pays for the models added and removed,
-- a changed warm set for the models whose warm bit flipped; a changed floor, routability,
-- an ended cool-down or a node back from offline rebuilds every entry of the node. A node
-- whose runtime is not serving stays alive (operators see it) but leaves every model's node
-- set, so /v1/models and routing drop it on this very call; its models stay known, so a
-- request for them is a 503, not a 404.
local function refresh_liveness(id, now, alive_ttl, new_json, old, s)
  if not s then
    s = node_state(id)
    redis.call('HSET', k_node(id), 'alive_until', now + alive_ttl)
  end
  local serving = serving_status(s.runtime_status)
  local was_live
  if old and (tonumber(old.alive_until or '') or -1) >= now then
    was_live = true
  else
    was_live = tonumber(redis.call('ZSCORE', k_alive(), id) or '-1') >= now
  end
  local changed = not was_live
  local rebuild = old == nil or not was_live
  -- Decoded only when something needs the list (a change, a rebuild, a known refresh).
  local models = nil
  local function current_models()
    if not models then models = decode_list(s.executable_models) end
    return models
  end
  local added = {}
  if new_json and new_json ~= s.executable_models then
    local before_models, new_models = current_models(), decode_list(new_json)
    local before, after = as_set(before_models), as_set(new_models)
    for _, m in ipairs(before_models) do
      if not after[m] then
        changed = true
        redis.call('ZREM', k_model_nodes(m), id)
        redis.call('ZREM', k_model_load(m), id)
        redis.call('HDEL', k_raised(id), m)
      end
    end
    for _, m in ipairs(new_models) do
      if not before[m] then added[#added + 1] = m end
    end
    if #added > 0 then changed = true end
    redis.call('HSET', k_node(id), 'executable_models', new_json)
    s.executable_models = new_json
    models = new_models
  end
  -- /v1/models shows backends too: a node whose backend changed moves the stamp.
  if s.gpu_backend and s.gpu_backend ~= s.listed_backend then
    redis.call('HSET', k_node(id), 'listed_backend', s.gpu_backend)
    changed = true
  end
  -- So does a node whose runtime stopped or resumed serving.
  local listed = serving and '1' or '0'
  if s.listed_serving ~= listed then
    redis.call('HSET', k_node(id), 'listed_serving', listed)
    changed = true
    rebuild = true
  end
  if changed then models_changed() end
  redis.call('ZADD', k_alive(), now + alive_ttl, id)
  if not rebuild then
    rebuild = tonumber(s.floor_base) ~= base_floor(s)
      or s.routable ~= (is_routable(s) and '1' or '0')
      or (s.excl_next ~= nil and tonumber(s.excl_next) <= now)
      or (old.loaded_models == nil) ~= (s.loaded_models == nil)
  end
  if rebuild then
    for _, m in ipairs(current_models()) do
      if serving then
        redis.call('ZADD', k_model_nodes(m), 'NX', now, id)
      else
        redis.call('ZREM', k_model_nodes(m), id)
      end
    end
    rebuild_load(id, now, s)
    refresh_known(id, models, s.models, now)
  else
    local warm_changed = old.loaded_models ~= s.loaded_models
    if #added > 0 or warm_changed then
      local warm = warm_of(s.loaded_models)
      if #added > 0 then
        local base = tonumber(s.floor_base)
        local routable = s.routable == '1'
        local excluded = excluded_now(id, now)
        for _, m in ipairs(added) do
          if serving then redis.call('ZADD', k_model_nodes(m), 'NX', now, id) end
          if routable and not excluded[m] then
            redis.call('ZADD', k_model_load(m), model_floor(base, warm, m), id)
          end
        end
        mark_known(added, now)
      end
      if warm_changed then
        -- Only the models whose warm bit flipped move, by exactly COLD (floor and raised).
        local was = warm_of(old.loaded_models)
        local current, fresh = as_set(current_models()), as_set(added)
        local flipped = {}
        for m in pairs(was) do if not warm[m] then flipped[m] = COLD end end
        for m in pairs(warm) do if not was[m] then flipped[m] = -COLD end end
        for m, delta in pairs(flipped) do
          if current[m] and not fresh[m] then
            local stored = redis.call('ZSCORE', k_model_load(m), id)
            if stored then redis.call('ZADD', k_model_load(m), tonumber(stored) + delta, id) end
            local fl = redis.call('HGET', k_raised(id), m)
            if fl then redis.call('HSET', k_raised(id), m, tonumber(fl) + delta) end
          end
        end
      end
    end
    if old.max_concurrency ~= s.max_concurrency then
      rescore_raised(id, in_flight(id, now), s.max_concurrency)
    end
    if now - (tonumber(s.known_at) or 0) >= KNOWN_REFRESH_MS then
      refresh_known(id, current_models(), s.models, now)
    elseif old.models ~= s.models then
      mark_known(decode_list(s.models), now)
    end
  end
  sweep_lapsed(now, SWEEP_BATCH)
end

-- Remove every trace of a node except its live leases: their holders release them
-- harmlessly (an emptied sorted set disappears), and the key is set to expire with the
-- latest one in case a holder died too. Setting the expiry here, once, keeps it off the
-- per-request path; a lease renewed past it belongs to a node that no longer exists.
-- Offline nodes leave model:<m>:nodes when swept but are remembered until forget-after: a
-- model one of them can execute stays known when its last live node goes (a request is then
-- a 503, not a 404). Offline nodes are few in a healthy fleet; past OFFLINE_SCAN of them the
-- model is kept known (prune forgets it once nobody has advertised it for forget-after).
local OFFLINE_SCAN = 64
local function offline_executors(except_id)
  local offline = redis.call('ZRANGE', k_alive(), '-inf', '(' .. now_ms(), 'BYSCORE', 'LIMIT',
    0, OFFLINE_SCAN + 1)
  if #offline > OFFLINE_SCAN then return nil end
  local models = {}
  for _, other in ipairs(offline) do
    if other ~= except_id then
      for _, m in ipairs(node_models(other)) do models[m] = true end
    end
  end
  return models
end

local function forget_node(id)
  local key = k_node(id)
  local leases = k_leases(id)
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now_ms())
  local last = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')[2]
  if last then redis.call('PEXPIREAT', leases, last) end
  local f = redis.call('HMGET', key, 'machine_name', 'runtime_port', 'key_id')
  if f[1] and f[2] and f[3] and f[3] ~= '' then
    redis.call('SREM', k_key_identities(f[3]), f[1] .. ':' .. f[2])
  end
  local remembered = false  -- read once, only when some model lost its last live node
  for _, m in ipairs(node_models(id)) do
    redis.call('ZREM', k_model_nodes(m), id)
    redis.call('ZREM', k_model_load(m), id)
    -- The last node that could execute it: the model leaves the fleet now, not at the
    -- 24 h forget (a request still queued for it finds it unknown at its next turn).
    local last = redis.call('ZCARD', k_model_nodes(m)) == 0
    if last then
      if remembered == false then remembered = offline_executors(id) end
      last = remembered ~= nil and not remembered[m]
    end
    if last then
      redis.call('ZREM', k_known(), m)
      redis.call('HDEL', k_created(), m)
      redis.call('DEL', k_model_load(m), k_model_rr(m), k_queue(m), k_queue_alive(m),
        k_queue_fair(m), k_queue_shed(m), k_queue_info(m))
      redis.call('SREM', k_queues_active(), m)
    end
  end
  models_changed()
  if f[1] and f[2] then
    local ident = f[1] .. ':' .. f[2]
    if redis.call('HGET', k_index(), ident) == id then
      redis.call('HDEL', k_index(), ident)
    end
  end
  redis.call('ZREM', k_alive(), id)
  redis.call('DEL', key, k_excluded(id), k_unsupported(id), k_raised(id), k_node_metrics(id))
  -- The sweep's mark means nothing without nodes: it goes with the last one.
  if redis.call('EXISTS', k_alive()) == 0 then redis.call('DEL', k_swept()) end
end
