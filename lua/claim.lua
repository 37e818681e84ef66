-- claim.lua: take pending entries for this consumer and report each entry's
-- delivery count as of the claim, atomically (no re-delivery can slip in
-- between the claim and the count).
--
-- KEYS[1] -> source stream
--
-- ARGV[1] -> group
-- ARGV[2] -> consumer
-- ARGV[3] -> mode:
--              "own":  this consumer's pending entries from ARGV[4] on (recovery)
--              "ids":  the entry IDs ARGV[5..], only those still owned by this consumer
--              "idle": entries of any consumer idle at least ARGV[5] ms, from ARGV[4] on
-- ARGV[4] -> start ID ("own", "idle"), or count of IDs ("ids")
-- ARGV[5] -> "own": max entries; "idle": min idle ms; "ids": first ID
-- ARGV[6] -> "idle": max entries
--
-- Returns {next, entries, deleted}:
--   next     the start ID of the next call ("0-0" when the scan is complete)
--   entries  a list of {id, deliveries, {field, value, ...}}
--   deleted  IDs that were pending but no longer exist in the stream; they are
--            acknowledged here so they cannot block the group forever
-- Writes: XCLAIM (delivery count + 1, idle reset), XACK of deleted entries.

local stream, group, consumer, mode = KEYS[1], ARGV[1], ARGV[2], ARGV[3]

local function count(id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] then return tonumber(p[1][4]) end
  return 0
end

local ids, nextid = {}, '0-0'
if mode == 'own' then
  local n = tonumber(ARGV[5])
  local p = redis.call('XPENDING', stream, group, ARGV[4], '+', n, consumer)
  for i, row in ipairs(p) do ids[i] = row[1] end
  if #p == n then
    -- Continue after the last ID seen: from its successor (ms-seq+1), which
    -- every server and miniredis take; "(" (exclusive) only for a sequence
    -- too large for a Lua number to hold exactly.
    local last = p[#p][1]
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    local n = tonumber(seq)
    if ms and n and n < 9007199254740991 then
      nextid = ms .. '-' .. string.format('%.0f', n + 1)
    else
      nextid = '(' .. last
    end
  end
elseif mode == 'ids' then
  local n = tonumber(ARGV[4])
  for i = 5, 4 + n do
    local p = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1)
    if p[1] and p[1][2] == consumer then ids[#ids + 1] = ARGV[i] end
  end
elseif mode == 'idle' then
  local r = redis.call('XAUTOCLAIM', stream, group, consumer, ARGV[5], ARGV[4], 'COUNT', ARGV[6])
  nextid = r[1]
  local entries, deleted = {}, r[3] or {}
  for _, e in ipairs(r[2]) do
    if e and e[1] then
      entries[#entries + 1] = {e[1], count(e[1]), e[2]}
    end
  end
  return {nextid, entries, deleted}
else
  return redis.error_reply('ERR claim.lua: unknown mode ' .. tostring(mode))
end

local entries, deleted = {}, {}
if #ids > 0 then
  local args = {'XCLAIM', stream, group, consumer, 0}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  local claimed = redis.call(unpack(args))
  local seen = {}
  for _, e in ipairs(claimed) do
    if e and e[1] then
      seen[e[1]] = true
      entries[#entries + 1] = {e[1], count(e[1]), e[2]}
    end
  end
  for _, id in ipairs(ids) do
    if not seen[id] then deleted[#deleted + 1] = id end
  end
  if #deleted > 0 then
    redis.call('XACK', stream, group, unpack(deleted))
  end
end
return {nextid, entries, deleted}
