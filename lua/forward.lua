-- forward.lua: append one outbox entry to its target stream, once.
--
-- KEYS[1] -> target stream
-- KEYS[2] -> forward record of the outbox entry, in the target's slot
--
-- ARGV[1] -> how long the forward record is kept, milliseconds
-- ARGV[2 ..] -> the fields and values to append
--
-- Returns:
--   {0, id}  appended now as id
--   {1, id}  forwarded before (as id): nothing written
--   {3}      WRONG_TYPE: the target exists and is not a stream; nothing written

local prev = redis.call('GET', KEYS[2])
if prev then
  return {1, prev}
end
local ty = redis.call('TYPE', KEYS[1])
ty = ty.ok or ty
if ty ~= 'stream' and ty ~= 'none' then
  return {3}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return {0, id}
