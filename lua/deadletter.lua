-- deadletter.lua: move one entry to the dead-letter stream atomically.
--
-- KEYS[1] -> source stream
-- KEYS[2] -> dead-letter stream
--
-- ARGV[1] -> group
-- ARGV[2] -> consumer
-- ARGV[3] -> entry ID
-- ARGV[4] -> delivery count seen at delivery
-- ARGV[5] -> error text
-- ARGV[6] -> time, Unix milliseconds (from the consumer's clock)
-- ARGV[7] -> n, the number of original field/value pairs
-- ARGV[8 .. 7+2n] -> the original fields and values, field names already escaped
-- ARGV[8+2n] -> t, the number of trace context field/value pairs (optional: 0)
-- ARGV[9+2n .. 8+2n+2t] -> the trace context fields ("stx.traceparent", …) and
--               values of the span the move is made in, added unescaped
--
-- Returns:
--   {0, dlqID}  moved: the dead letter was appended and the entry acknowledged
--   {1}         NOT_OWNED: the entry is not pending for this consumer with that
--               delivery count; nothing was written
--   {3}         WRONG_TYPE: the dead-letter key exists and is not a stream;
--               nothing was written
--   error NOPERM  the user may not XADD to the dead-letter stream or XACK;
--               nothing was written

local stream, dlq, group, consumer, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]

local p = redis.call('XPENDING', stream, group, id, id, 1)
local row = p[1]
if not row or row[2] ~= consumer or tonumber(row[4]) ~= tonumber(ARGV[4]) then
  return {1}
end
local ty = redis.call('TYPE', dlq)
ty = ty.ok or ty
if ty ~= 'stream' and ty ~= 'none' then
  return {3}
end

-- ACLs are checked at every call: ask for both writes first, or a refused
-- XACK would leave the dead letter appended and the entry pending.
if redis.acl_check_cmd then
  for _, c in ipairs({{'XADD', dlq, '*', 'f', 'v'}, {'XACK', stream, group, id}}) do
    if not redis.acl_check_cmd(unpack(c)) then
      return redis.error_reply('NOPERM streamtx dead-letter: this user may not run ' .. c[1] ..
        ' on key ' .. c[2] .. '; nothing was written')
    end
  end
end

local args = {'XADD', dlq, '*',
  'stx.stream', stream, 'stx.id', id, 'stx.group', group, 'stx.consumer', consumer,
  'stx.error', ARGV[5], 'stx.deliveries', ARGV[4], 'stx.time', ARGV[6]}
local n = tonumber(ARGV[7])
for j = 8, 7 + 2 * n do
  args[#args + 1] = ARGV[j]
end
local t = tonumber(ARGV[8 + 2 * n] or '0')
for j = 9 + 2 * n, 8 + 2 * n + 2 * t do
  args[#args + 1] = ARGV[j]
end
local dlqID = redis.call(unpack(args))
redis.call('XACK', stream, group, id)
return {0, dlqID}
