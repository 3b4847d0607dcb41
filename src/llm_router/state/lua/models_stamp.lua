-- What a replica's cached /v1/models is checked against, in O(log n): the models stamp,
-- and how many nodes went offline since the list was made (their liveness deadline fell
-- between then and now). A node coming back, or any change to who executes what, moves
-- the stamp instead.
--
-- KEYS[1]  fleet base
-- ARGV[1]  when the cached list was made (ms, Redis clock)
-- Returns {stamp, nodes lapsed since}

local now = now_ms()
local lapsed = redis.call('ZCOUNT', k_alive(), ARGV[1], '(' .. now)
return {redis.call('GET', k_models_version()) or '0', lapsed}
