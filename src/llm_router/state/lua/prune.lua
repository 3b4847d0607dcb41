-- Forget what nobody has refreshed for a long time. Any replica may run it at any time:
-- it is idempotent, and nothing depends on a particular replica being alive to clean up.
--
-- KEYS[1]  fleet base
-- ARGV[1]  forget-after (ms): offline nodes and unadvertised models older than this go
-- ARGV[2]  at most this many nodes are forgotten per call (bounds the script's run time)
-- Returns {nodes_forgotten, models_forgotten}

local now = now_ms()
local horizon = now - tonumber(ARGV[1])
sweep_lapsed(now, tonumber(ARGV[2]))
local stale = redis.call('ZRANGE', k_alive(), '-inf', horizon, 'BYSCORE', 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, id in ipairs(stale) do forget_node(id) end

local models = redis.call('ZRANGE', k_known(), '-inf', horizon, 'BYSCORE', 'LIMIT', 0,
  tonumber(ARGV[2]))
for _, m in ipairs(models) do
  -- Members of model:<m>:nodes leave with their node (forgotten, swept once it lapsed, or
  -- no longer executing it): an empty set means nobody can run the model.
  if redis.call('ZCARD', k_model_nodes(m)) == 0 then
    redis.call('ZREM', k_known(), m)
    redis.call('HDEL', k_created(), m)
    redis.call('DEL', k_model_nodes(m), k_model_load(m), k_model_rr(m), k_queue(m),
      k_queue_alive(m), k_queue_fair(m), k_queue_shed(m), k_queue_info(m))
    redis.call('SREM', k_queues_active(), m)
  end
end
return {#stale, #models}
