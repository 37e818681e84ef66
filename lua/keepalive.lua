-- keepalive.lua: reset the idle time of entries a consumer is still
-- handling, so that no other consumer claims them, without counting a
-- delivery.
--
-- KEYS[1] -> source stream
--
-- ARGV[1] -> group
-- ARGV[2] -> consumer
-- then pairs -> entry ID, delivery count seen when it was delivered
--
-- Returns the number of entries whose idle time was reset: those still
-- pending for this consumer with the delivery count seen. An entry claimed
-- or re-delivered since is left alone.
-- Writes: XCLAIM … JUSTID (idle reset, delivery count unchanged).

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  local row = p[1]
  if row and row[2] == consumer and tostring(row[4]) == ARGV[i + 1] then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
    n = n + 1
  end
end
return n
