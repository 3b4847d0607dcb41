-- Remove a node now (admin, or the node itself with its token).
--
-- KEYS[1]  fleet base
-- ARGV[1]  node id
-- ARGV[2]  sha256 of the token presented, or "" when an admin asks
-- Returns {"ok"} | {"not_found"} | {"unauthorized"}

local id = ARGV[1]
local token_hash = redis.call('HGET', k_node(id), 'token_hash')
if not token_hash then return {'not_found'} end
if ARGV[2] ~= '' and token_hash ~= ARGV[2] then return {'unauthorized'} end
forget_node(id)
return {'ok'}
