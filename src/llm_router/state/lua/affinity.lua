-- Conversation affinity: soft pins from a request's affinity keys to the node that served
-- them last. Prepended to acquire.lua only (after lib.lua); acquire decides, these helpers
-- read and write the pins and apply the bounded-load rule.
--
-- A pin is a plain string {base}pin:<key> holding a node id, with a TTL. The replica sends
-- the keys most specific first; the first that exists names the pinned node.

local function k_pin(key) return BASE .. 'pin:' .. key end

-- The node the most specific existing pin names, or nil. One MGET whatever the key count.
local function pinned_node(keys)
  if #keys == 0 then return nil end
  local names = {}
  for i, key in ipairs(keys) do names[i] = k_pin(key) end
  for _, node in ipairs(redis.call('MGET', unpack(names))) do
    if node then return node end
  end
  return nil
end

-- Point every key at the node that took the request (and restart their TTL).
local function write_pins(keys, node, ttl_ms)
  for _, key in ipairs(keys) do
    redis.call('SET', k_pin(key), node, 'PX', ttl_ms)
  end
end

-- Bounded load: the pinned candidate `p` keeps the request while it has a free slot and its
-- utilisation is at most `margin` (same units as the score's utilisation, 0..1e6) above the
-- best alternative `best`. Returns the winner and the outcome: "hit" or "moved:<cause>".
local function bounded_choice(p, best, margin)
  if p == nil then return best, 'moved:unavailable' end
  if p.score >= FULL then return best, 'moved:full' end
  if best ~= nil and p.util > best.util + margin then return best, 'moved:loaded' end
  return p, 'hit'
end
