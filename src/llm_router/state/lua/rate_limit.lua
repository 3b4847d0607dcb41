-- Per-key rate limit: a sliding window log shared by every replica.
--
-- KEYS[1]  fleet base
-- ARGV[1]  key id (the public id of the API key)
-- ARGV[2]  requests allowed per window
-- ARGV[3]  window (ms)
-- ARGV[4]  a member unique to this request
-- Returns {1, count} when admitted, {0, count, retry_after_ms} when refused.
--
-- The log holds at most `limit` members and expires with the window, so an idle or
-- abusive key costs bounded memory.

local key = BASE .. 'rate:' .. ARGV[1]
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local retry = window
  if oldest[2] then retry = tonumber(oldest[2]) + window - now end
  return {0, count, math.max(retry, 1)}
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, window)
return {1, count + 1}
