-- What a replica's cached /v1/models is checked against: one GET and the Redis clock.
--
-- KEYS[1]  fleet base
-- Returns {stamp, now (ms)}

return {redis.call('GET', k_models_version()) or '0', now_ms()}
