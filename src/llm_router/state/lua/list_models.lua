-- The models at least one live node can execute, sorted by id (identical on every replica).
--
-- KEYS[1]  fleet base
-- ARGV[1]  forget-after (ms): models advertised longer ago are not even considered
-- Returns a flat list: stamp, now (ms), then model, created (s), live node count, JSON
-- list of backends, ... The stamp is models:version as this list saw it; the list stays
-- right while the stamp does not move and no node's liveness deadline passes (see
-- models_stamp.lua).
--
-- model:<m>:nodes holds the nodes that can execute <m> minus those swept since their
-- liveness lapsed (lib.lua, sweep_lapsed); the ones that lapsed after the last sweep are
-- subtracted here, so the count is exact without a liveness read per member.

local now = now_ms()
local out = {redis.call('GET', k_models_version()) or '0', now}
local since = redis.call('GET', k_swept()) or '0'
local lapsed = redis.call('ZRANGE', k_alive(), '(' .. since, now, 'BYSCORE')
local gone, gone_from = as_set(lapsed), {}
for _, id in ipairs(lapsed) do
  for _, m in ipairs(node_models(id)) do
    if redis.call('ZSCORE', k_model_nodes(m), id) then gone_from[m] = (gone_from[m] or 0) + 1 end
  end
end
local models = redis.call('ZRANGE', k_known(), now - tonumber(ARGV[1]), '+inf', 'BYSCORE')
table.sort(models)
for _, m in ipairs(models) do
  local count = redis.call('ZCARD', k_model_nodes(m)) - (gone_from[m] or 0)
  if count > 0 then
    -- Backends are sampled from a bounded number of nodes to keep the script short.
    local sample = redis.call('ZRANGE', k_model_nodes(m), 0, 63 + (gone_from[m] or 0))
    local backends, seen = {}, {}
    for _, id in ipairs(sample) do
      local b = not gone[id] and redis.call('HGET', k_node(id), 'gpu_backend')
      if b and not seen[b] then
        seen[b] = true
        backends[#backends + 1] = b
      end
    end
    table.sort(backends)
    out[#out + 1] = m
    out[#out + 1] = redis.call('HGET', k_created(), m) or math.floor(now / 1000)
    out[#out + 1] = count
    out[#out + 1] = cjson.encode(backends)
  end
end
return out
