-- replay.lua: move dead letters back into their source stream atomically.
--
-- KEYS[1] -> dead-letter stream
-- KEYS[2] -> source stream the dead letters came from
--
-- ARGV[1] -> t, the number of trace context field/value pairs
-- ARGV[2 .. 1+2t] -> the trace context fields ("stx.traceparent", …) and
--               values of the span the replay is made in
-- ARGV[2+2t ..] -> dead-letter entry IDs
--
-- Each dead letter that exists and names KEYS[2] as its stx.stream is
-- appended to KEYS[2] with its original fields (one "stx." taken off fields
-- that were escaped) plus stx.replay.group (the group that dead-lettered it:
-- other groups skip it) and stx.replay.of (its original ID), then deleted
-- from the dead-letter stream. It carries a trace context: the one given in
-- ARGV, or else the dead letter's own (its "stx." fields other than the
-- dead-letter metadata: the context of the span that moved it), or else the
-- one the original entry had. Original fields that a replay sets anew
-- (stx.replay.*, and when it carries another trace context, that context's
-- fields and stx.traceparent, stx.tracestate, stx.baggage) are left out.
--
-- Returns {replayed, missing, mismatched}:
--   replayed    a list of {dead-letter ID, new source ID}
--   missing     IDs not found in the dead-letter stream (replayed already,
--               purged, or never there)
--   mismatched  IDs whose stx.stream is not KEYS[2]; left untouched
-- Fails with WRONGTYPE, writing nothing, when a key has another type, and
-- with NOPERM, writing nothing, when the user may not XADD or XDEL them.

local dlq, src = KEYS[1], KEYS[2]
for _, k in ipairs({dlq, src}) do
  local ty = redis.call('TYPE', k)
  ty = ty.ok or ty
  if ty ~= 'stream' and ty ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. k .. ' is not a stream')
  end
end

-- ACLs are checked at every call: ask for the writes first, or a refusal
-- after some replays would leave the rest half done.
if redis.acl_check_cmd then
  for _, c in ipairs({{'XADD', src, '*', 'f', 'v'}, {'XDEL', dlq, '0-1'}}) do
    if not redis.acl_check_cmd(unpack(c)) then
      return redis.error_reply('NOPERM streamtx replay: this user may not run ' .. c[1] ..
        ' on key ' .. c[2] .. '; nothing was written')
    end
  end
end

local known = {['stx.stream'] = true, ['stx.id'] = true, ['stx.group'] = true, ['stx.consumer'] = true,
  ['stx.error'] = true, ['stx.deliveries'] = true, ['stx.time'] = true}
local nt = tonumber(ARGV[1])
local given = {}
for j = 2, 1 + 2 * nt, 2 do
  given[#given + 1] = {ARGV[j], ARGV[j + 1]}
end

local replayed, missing, mismatched = {}, {}, {}
for a = 2 + 2 * nt, #ARGV do
  local id = ARGV[a]
  local r = redis.call('XRANGE', dlq, id, id)
  local e = r[1]
  if not e then
    missing[#missing + 1] = id
  else
    local f = e[2]
    local meta, carried, orig = {}, {}, {}
    for j = 1, #f, 2 do
      local name = f[j]
      if string.sub(name, 1, 4) == 'stx.' then
        if string.sub(name, 5, 8) == 'stx.' then
          orig[#orig + 1] = {string.sub(name, 5), f[j + 1]}
        elseif known[name] then
          meta[name] = f[j + 1]
        else
          carried[#carried + 1] = {name, f[j + 1]}
        end
      else
        orig[#orig + 1] = {name, f[j + 1]}
      end
    end
    local trace = given
    if #trace == 0 then
      trace = carried
    end
    local skip = {['stx.replay.group'] = true, ['stx.replay.of'] = true}
    if #trace > 0 then
      skip['stx.traceparent'], skip['stx.tracestate'], skip['stx.baggage'] = true, true, true
      for _, p in ipairs(trace) do
        skip[p[1]] = true
      end
    end
    if meta['stx.stream'] ~= src then
      mismatched[#mismatched + 1] = id
    else
      local args = {'XADD', src, '*'}
      for _, p in ipairs(orig) do
        if not skip[p[1]] then
          args[#args + 1] = p[1]
          args[#args + 1] = p[2]
        end
      end
      for _, p in ipairs(trace) do
        args[#args + 1] = p[1]
        args[#args + 1] = p[2]
      end
      args[#args + 1] = 'stx.replay.group'
      args[#args + 1] = meta['stx.group'] or ''
      args[#args + 1] = 'stx.replay.of'
      args[#args + 1] = meta['stx.id'] or ''
      local newid = redis.call(unpack(args))
      redis.call('XDEL', dlq, id)
      replayed[#replayed + 1] = {id, newid}
    end
  end
end
return {replayed, missing, mismatched}
