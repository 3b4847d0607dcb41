-- The models at least one live node can execute, sorted by id (identical on every replica).
--
-- KEYS[1]  fleet base
-- ARGV[1]  forget-after (ms): models advertised longer ago are not even considered
-- Returns a flat list: stamp, now (ms), then model, created (s), live node count, JSON
-- list of backends, ... The stamp is models:version as this list saw it; the list stays
-- right while the stamp does not move and no node's liveness deadline passes (see
-- models_stamp.lua).

local now = now_ms()
local out = {redis.call('GET', k_models_version()) or '0', now}
local models = redis.call('ZRANGE', k_known(), now - tonumber(ARGV[1]), '+inf', 'BYSCORE')
table.sort(models)
for _, m in ipairs(models) do
  local count = redis.call('ZCOUNT', k_model_nodes(m), now, '+inf')
  if count > 0 then
    -- Backends are sampled from a bounded number of nodes to keep the script short.
    local live = redis.call('ZRANGE', k_model_nodes(m), now, '+inf', 'BYSCORE', 'LIMIT', 0, 64)
    local backends, seen = {}, {}
    for _, id in ipairs(live) do
      local b = redis.call('HGET', k_node(id), 'gpu_backend')
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
