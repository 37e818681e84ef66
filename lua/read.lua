-- read.lua: read new entries of a partition for its lease holder. Run with
-- the fence (see internal/rdb.FencePrologue), so that an instance that lost
-- its lease cannot take entries into the group's pending list after the
-- next owner recovered it.
--
-- KEYS[1] -> partition stream
--
-- ARGV[1] -> group
-- ARGV[2] -> consumer
-- ARGV[3] -> max entries
--
-- Returns {top, entries, {}} (the shape of claim.lua's reply):
--   top      the ID of the stream's last entry ("0-0" when empty), to block on
--            with XREAD when nothing was new
--   entries  a list of {id, 1, {field, value, ...}}
-- Writes: XREADGROUP (the group's last ID, the pending list).

local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', tonumber(ARGV[3]), 'STREAMS', stream, '>')
local entries = {}
if res and res[1] then
  for i, e in ipairs(res[1][2]) do entries[i] = {e[1], 1, e[2]} end
end
local top = '0-0'
if #entries == 0 then
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if last[1] then top = last[1][1] end
end
return {top, entries, {}}
