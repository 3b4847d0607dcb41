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
--   + capability gap (10000 - gpu_capability_score, 0..9999)   * 1e2
--   + latency bucket (average response time / 100 ms, 0..99)
-- so ZRANGE BYSCORE on model:<m>:load yields the least loaded node first and, among equally
-- loaded ones, a warm one before one that would have to load the model, then the least
-- pressed, most capable and fastest; every score >= FULL means "no free slot". The fields
-- never overlap and the largest score stays far below 2^53, so doubles hold them exactly.

local BASE = KEYS[1]
local FULL = 1e15
local UTIL_UNIT = 1e9
local COLD = 1e8

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function k_node(id) return BASE .. 'node:' .. id end
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

local function decode_list(raw)
  if not raw then return {} end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return {}
end

local function as_set(list)
  local set = {}
  for _, v in ipairs(list) do set[v] = true end
  return set
end

-- Drop leases whose deadline passed (their replica died or stopped renewing) and count
-- the rest: the node's true in-flight count.
local function in_flight(id, now)
  local key = k_leases(id)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

-- The fields routing needs, read with one HMGET: draining, initializing, max_concurrency,
-- gpu_capability_score, average_response_time_ms, executable_models, ip_address,
-- node_api_port, loaded_models, runtime_load, scheme, node_secret. The last two ride
-- along so that the replica can reach the node (https or not) and present its secret
-- without a second read.
local function routing_fields(id)
  return redis.call('HMGET', k_node(id), 'draining', 'initializing', 'max_concurrency',
    'gpu_capability_score', 'average_response_time_ms', 'executable_models', 'ip_address',
    'node_api_port', 'loaded_models', 'runtime_load', 'scheme', 'node_secret')
end

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

-- The node's score without the per-model warm bit, and its capacity.
local function score_of(f, inflight)
  local maxc = tonumber(f[3]) or 1
  if maxc < 1 then maxc = 1 end
  local util = math.floor(math.min(inflight, maxc) * 1000000 / maxc)
  local cap = math.floor(math.min(math.max(tonumber(f[4]) or 0, 0), 9999))
  local lat = math.floor(math.min(math.max(tonumber(f[5]) or 0, 0), 9999) / 100)
  return util * UTIL_UNIT + runtime_pressure(f[10]) * 1e7 + (9999 - cap) * 1e2 + lat, maxc
end

-- Models the node holds in memory, as a set; nil when it does not say (then every model
-- counts as warm: no report is no reason to avoid a node).
local function warm_set(f)
  if not f[9] then return nil end
  return as_set(decode_list(f[9]))
end

local function model_score(base, warm, m)
  if warm == nil or warm[m] then return base end
  return base + COLD
end

-- Rewrite the node's score in the load index of each model it already sits in.
-- XX: membership is decided by sync_load_membership (heartbeat, drain, exclusion), not here.
local function update_scores_for(models, id, score, warm)
  for _, m in ipairs(models) do
    redis.call('ZADD', k_model_load(m), 'XX', model_score(score, warm, m), id)
  end
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
local function runtime_serving(id)
  local s = redis.call('HGET', k_node(id), 'runtime_status')
  return (not s) or s == '' or s == 'ready'
end

-- Put the node into (or take it out of) the load index of each of its models.
local function sync_load_membership(id, now)
  local f = routing_fields(id)
  local models = decode_list(f[6])
  local score = score_of(f, in_flight(id, now))
  local warm = warm_set(f)
  local resting = f[1] == '1' or f[2] == '1' or not runtime_serving(id)
  local excluded = excluded_now(id, now)
  for _, m in ipairs(models) do
    if resting or excluded[m] then
      redis.call('ZREM', k_model_load(m), id)
    else
      redis.call('ZADD', k_model_load(m), model_score(score, warm, m), id)
    end
  end
end

-- Tell waiting replicas that capacity for these models may be free, but only for models
-- somebody is queued on: the common, unqueued path publishes nothing.
local function wake_queues(models)
  for _, m in ipairs(models) do
    if redis.call('EXISTS', k_queue(m)) == 1 then
      redis.call('PUBLISH', k_events(), m)
    end
  end
end

-- Put (node, model) in cool-down until `until_ms` and out of the model's load index.
local function exclude_pair(id, model, until_ms, now)
  cool_down(k_excluded(id), model, until_ms, now)
  redis.call('ZREM', k_model_load(model), id)
end

-- End one lease: free its slot, let `on_node()` record what the attempt left (exclusions,
-- refusals, a response id) if the node still exists, rescore the node and wake replicas
-- queued on its models (each model once per script call: `woken` is shared by the
-- caller). Returns the node's in-flight count.
local function end_lease(id, lease_id, now, woken, on_node)
  redis.call('ZREM', k_leases(id), lease_id)
  local inflight = in_flight(id, now)
  local f = routing_fields(id)
  if not f[3] then return inflight end  -- the node was removed meanwhile
  on_node()
  local models = decode_list(f[6])
  update_scores_for(models, id, (score_of(f, inflight)), warm_set(f))
  for _, m in ipairs(models) do
    if not woken[m] then
      woken[m] = true
      wake_queues({m})
    end
  end
  return inflight
end

local function node_models(id)
  return decode_list(redis.call('HGET', k_node(id), 'executable_models'))
end

-- Record liveness and the executable set of a node. `new_json` is the set as the JSON list
-- the replica sent (stored verbatim: cjson would turn an empty list into "{}"), nil keeps
-- the stored set. A node whose runtime is not serving stays alive (operators see it) but
-- leaves every model's node set, so /v1/models and routing drop it on this very call;
-- its models stay known, so a request for them is a 503, not a 404.
local function refresh_liveness(id, now, alive_ttl, new_json, installed)
  local serving = runtime_serving(id)
  local deadline = now + alive_ttl
  local old = node_models(id)
  local new_models = nil
  local was_live = tonumber(redis.call('ZSCORE', k_alive(), id) or '-1') >= now
  local changed = not was_live
  if new_json then
    new_models = decode_list(new_json)
    local keep = as_set(new_models)
    for _, m in ipairs(old) do
      if not keep[m] then
        changed = true
        redis.call('ZREM', k_model_nodes(m), id)
        redis.call('ZREM', k_model_load(m), id)
      end
    end
    if #new_models ~= #old then changed = true end
    redis.call('HSET', k_node(id), 'executable_models', new_json)
  else
    new_models = old
  end
  -- /v1/models shows backends too: a node whose backend changed moves the stamp.
  local b = redis.call('HMGET', k_node(id), 'gpu_backend', 'listed_backend')
  if b[1] and b[1] ~= b[2] then
    redis.call('HSET', k_node(id), 'listed_backend', b[1])
    changed = true
  end
  -- So does a node whose runtime stopped or resumed serving.
  local listed = serving and '1' or '0'
  if redis.call('HGET', k_node(id), 'listed_serving') ~= listed then
    redis.call('HSET', k_node(id), 'listed_serving', listed)
    changed = true
  end
  if changed then models_changed() end
  redis.call('ZADD', k_alive(), deadline, id)
  local executable = {}
  for _, m in ipairs(new_models) do
    executable[m] = true
    if serving then
      redis.call('ZADD', k_model_nodes(m), deadline, id)
    else
      redis.call('ZREM', k_model_nodes(m), id)
    end
    -- ZADD answers 1 only for a model the fleet did not know yet.
    if redis.call('ZADD', k_known(), now, m) == 1 then
      redis.call('HSETNX', k_created(), m, math.floor(now / 1000))
    end
  end
  for _, m in ipairs(installed or {}) do
    if not executable[m] and redis.call('ZADD', k_known(), now, m) == 1 then
      redis.call('HSETNX', k_created(), m, math.floor(now / 1000))
    end
  end
  sync_load_membership(id, now)
end

-- Remove every trace of a node except its live leases: their holders release them
-- harmlessly (an emptied sorted set disappears), and the key is set to expire with the
-- latest one in case a holder died too. Setting the expiry here, once, keeps it off the
-- per-request path; a lease renewed past it belongs to a node that no longer exists.
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
  for _, m in ipairs(node_models(id)) do
    redis.call('ZREM', k_model_nodes(m), id)
    redis.call('ZREM', k_model_load(m), id)
    -- The last node that could execute it: the model leaves the fleet now, not at the
    -- 24 h forget (a request still queued for it finds it unknown at its next turn).
    if redis.call('ZCARD', k_model_nodes(m)) == 0 then
      redis.call('ZREM', k_known(), m)
      redis.call('HDEL', k_created(), m)
      redis.call('DEL', k_model_load(m), k_model_rr(m), k_queue(m), k_queue_alive(m),
        k_queue_fair(m), k_queue_shed(m), k_queue_info(m))
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
  redis.call('DEL', key, k_excluded(id), k_unsupported(id))
end
