-- trim.lua: trim a stream to its safe point, computed and applied in one
-- script, so no group can read or claim between the computation and the trim.
--
-- The safe point of a group is its oldest pending entry when it has pending
-- entries, else the ID just after its last-delivered ID. Every entry strictly
-- below it has been delivered to the group and acknowledged. The stream's safe
-- point is the minimum over its groups; the entries below it are removed with
-- an exact XTRIM MINID (never "~").
--
-- KEYS[1] -> stream
--
-- ARGV[1] -> age cutoff: an ID "ms-0" (Unix milliseconds of now - keep-min-age,
--            from the caller's clock); entries at or above it are never
--            trimmed. "" for no cutoff.
-- ARGV[2] -> "1" for a dry run: count the entries that would be removed and
--            write nothing; "0" to trim.
--
-- Returns:
--   {0, point, removed, heldBy, pending, safe, byAge}
--               OK: point is the MINID used (entries below it were removed,
--               or would be in a dry run); removed is their number; heldBy
--               is the group whose position set the safe point; pending is 1
--               when that position is the group's oldest pending entry, 0
--               when it is its last-delivered ID + 1; safe is the safe point
--               before the age cutoff; byAge is 1 when the cutoff lowered the
--               point below safe.
--   {1}         NO_STREAM: the key does not exist; nothing was written
--   {2}         NO_GROUPS: the stream has no consumer groups; nothing was
--               written (nobody's position says what is safe to remove)
--   {3}         WRONG_TYPE: the key exists and is not a stream; nothing was
--               written

local stream, cutoff, dry = KEYS[1], ARGV[1], ARGV[2] == '1'

local ty = redis.call('TYPE', stream)
ty = ty.ok or ty
if ty == 'none' then
  return {1}
elseif ty ~= 'stream' then
  return {3}
end

-- IDs are compared as decimal strings: a sequence number can exceed 2^53,
-- beyond what a Lua number holds exactly.
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then
    ms, seq = string.match(id, '^(%d+)$'), '0'
  end
  return (string.gsub(ms, '^0+(%d)', '%1')), (string.gsub(seq, '^0+(%d)', '%1'))
end

local function numcmp(a, b)
  if #a ~= #b then
    return #a < #b and -1 or 1
  end
  if a == b then
    return 0
  end
  return a < b and -1 or 1
end

local function idcmp(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  local c = numcmp(am, bm)
  if c ~= 0 then
    return c
  end
  return numcmp(as, bs)
end

local MAX = '18446744073709551615'

local function incr(n)
  local digits, i = {}, #n
  for j = 1, #n do
    digits[j] = string.byte(n, j) - 48
  end
  while i >= 1 do
    if digits[i] < 9 then
      digits[i] = digits[i] + 1
      break
    end
    digits[i] = 0
    i = i - 1
  end
  local s = ''
  for j = 1, #digits do
    s = s .. string.char(digits[j] + 48)
  end
  if i < 1 then
    s = '1' .. s
  end
  return s
end

-- after returns the smallest ID above id (id itself when id is the largest).
local function after(id)
  local ms, seq = split(id)
  if seq ~= MAX then
    return ms .. '-' .. incr(seq)
  end
  if ms ~= MAX then
    return incr(ms) .. '-0'
  end
  return ms .. '-' .. seq
end

local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then
  return {2}
end

local safe, heldBy, heldPending
for _, g in ipairs(groups) do
  local name, last
  for j = 1, #g, 2 do
    if g[j] == 'name' then name = g[j + 1] end
    if g[j] == 'last-delivered-id' then last = g[j + 1] end
  end
  local point, pending = after(last), 0
  local summary = redis.call('XPENDING', stream, name)
  if tonumber(summary[1]) > 0 and summary[2] and idcmp(summary[2], point) < 0 then
    point, pending = summary[2], 1
  end
  if not safe or idcmp(point, safe) < 0 then
    safe, heldBy, heldPending = point, name, pending
  end
end

local point, byAge = safe, 0
if cutoff ~= '' and idcmp(cutoff, point) < 0 then
  point, byAge = cutoff, 1
end

local removed = 0
if idcmp(point, '0-1') < 0 then
  removed = 0 -- nothing is below 0-0 (and XRANGE cannot end before it)
elseif dry then
  local start = '-'
  while true do
    local page = redis.call('XRANGE', stream, start, '(' .. point, 'COUNT', 1000)
    removed = removed + #page
    if #page < 1000 then
      break
    end
    start = '(' .. page[#page][1]
  end
else
  removed = redis.call('XTRIM', stream, 'MINID', point)
end

return {0, point, removed, heldBy, heldPending, safe, byAge}
