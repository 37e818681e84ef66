-- delconsumer.lua: delete a consumer from a group only if it has nothing
-- pending and has been idle long enough, atomically.
--
-- KEYS[1] -> source stream
--
-- ARGV[1] -> group
-- ARGV[2] -> consumer
-- ARGV[3] -> minimum idle time, milliseconds
--
-- Returns:
--   1  deleted
--   0  kept: it has pending entries, is not idle long enough, or is not there

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local p = redis.call('XPENDING', stream, group, '-', '+', 1, consumer)
if #p > 0 then
  return 0
end
for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
  local name, idle
  for j = 1, #info, 2 do
    if info[j] == 'name' then name = info[j + 1] end
    if info[j] == 'idle' then idle = tonumber(info[j + 1]) end
  end
  if name == consumer then
    if idle and idle >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
      return 1
    end
    return 0
  end
end
return 0
