-- produce.lua: append one entry to a stream, at most once per idempotency key
-- within a window. The dedupe check, the XADD and the dedupe record are one
-- script, so a retry after a lost reply finds the record and appends nothing.
--
-- KEYS[1] -> stream
-- KEYS[2] -> dedupe record (a string holding the entry ID); absent when the
--            publish has no idempotency key
--
-- ARGV[1] -> window in milliseconds: the dedupe record's PX (ignored without
--            KEYS[2])
-- ARGV[2] -> trim strategy: "" (none), "MAXLEN" or "MINID"
-- ARGV[3] -> trim operator: "=" (exact) or "~" (approximate)
-- ARGV[4] -> trim threshold (a length or a stream ID; ignored when ARGV[2] is "")
-- ARGV[5 ..] -> the entry's fields and values, field, value, …
--
-- Returns:
--   {0, id}  APPENDED: the entry was appended with ID id (and the record set)
--   {1, id}  DUPLICATE: the key was published within the window as entry id;
--            nothing was written
--   {3}      WRONG_TYPE: the stream key exists and is not a stream; nothing
--            was written

local stream, record = KEYS[1], KEYS[2]

if record then
  local first = redis.call('GET', record)
  if first then
    return {1, first}
  end
end

local ty = redis.call('TYPE', stream)
ty = ty.ok or ty
if ty ~= 'stream' and ty ~= 'none' then
  return {3}
end

local args = {'XADD', stream}
if ARGV[2] ~= '' then
  args[#args + 1] = ARGV[2]
  args[#args + 1] = ARGV[3]
  args[#args + 1] = ARGV[4]
end
args[#args + 1] = '*'
for j = 5, #ARGV do
  args[#args + 1] = ARGV[j]
end
local id = redis.call(unpack(args))

if record then
  redis.call('SET', record, id, 'PX', ARGV[1])
end
return {0, id}
