-- A waiter gives up (timeout, client gone, replica shutting down): leave the queue now.
--
-- KEYS[1]  fleet base
-- ARGV[1]  model
-- ARGV[2]  ticket
-- Returns 1 if the ticket was queued.

local qkey = k_queue(ARGV[1])
local was_head = redis.call('ZRANGE', qkey, 0, 0)[1] == ARGV[2]
local removed = redis.call('ZREM', qkey, ARGV[2])
redis.call('ZREM', k_queue_alive(ARGV[1]), ARGV[2])
redis.call('HDEL', k_queue_info(ARGV[1]), ARGV[2])
if queue_shrank(ARGV[1]) and was_head then
  redis.call('PUBLISH', k_events(), ARGV[1])
end
return removed
