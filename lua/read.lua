-- read.lua: read new entries of a partition for its lease holder. Run with
-- the fence (see internal/rdb.FencePrologue), so that an instance that lost
-- its lease cannot take entries into the group's pending list after the
-- next owner recovered it.
--
-- A read is idempotent: the same read sent again (a client that retries a
-- command whose reply was lost, as go-redis does by default) returns the
-- entries the first run delivered instead of reading past them, which would
-- leave those pending unseen and let later entries of their keys go first.
--
-- KEYS[1] -> partition stream
-- KEYS[2] -> last read record: "<token> <first ID> <last ID>" of the last
--            read that delivered entries
--
-- ARGV[1] -> group
-- ARGV[2] -> consumer
-- ARGV[3] -> max entries
-- ARGV[4] -> read token: random per read, the same when a read is sent again
--
-- Returns a flat list, cheaper to build and to parse than nested ones:
--   {top, id, n, field, value, ... (n pairs), id, n, ...}
--   top      the ID of the stream's last entry ("0-0" when empty) when no
--            entry is returned, to block on with XREAD; "" otherwise
--   then each entry: its ID, its number of fields, its fields and values
-- Writes: XREADGROUP (the group's last ID, the pending list), SET of the last
-- read record when entries were delivered.

local stream, lastread, group, consumer, token = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4]
local out = {''}
local function add(e)
  local fs = e[2]
  local n = #out
  out[n + 1], out[n + 2] = e[1], #fs / 2
  n = n + 2
  for i = 1, #fs do out[n + i] = fs[i] end
end
local prev = redis.call('GET', lastread)
local again = false
if prev then
  local sp = string.find(prev, ' ', 1, true)
  if sp and string.sub(prev, 1, sp - 1) == token then
    -- This read ran already and its reply was lost: what it delivered is
    -- pending for consumer (no one else reads under the lease).
    again = true
    local first, last = string.match(string.sub(prev, sp + 1), '^(%S+) (%S+)$')
    if first then
      for _, e in ipairs(redis.call('XRANGE', stream, first, last)) do add(e) end
    end
  end
end
if not again then
  local res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', tonumber(ARGV[3]), 'STREAMS', stream, '>')
  if res and res[1] then
    local es = res[1][2]
    for _, e in ipairs(es) do add(e) end
    if #es > 0 then
      -- A read of new entries delivers a run of the stream: its first and
      -- last IDs name it.
      redis.call('SET', lastread, token .. ' ' .. es[1][1] .. ' ' .. es[#es][1])
    end
  end
end
if #out == 1 then
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  out[1] = last[1] and last[1][1] or '0-0'
end
return out
