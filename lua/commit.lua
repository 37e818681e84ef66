-- commit.lua: commit the effects of a batch of handled entries atomically.
--
-- KEYS[1]              -> source stream
-- KEYS[2]              -> offsets hash (field = consumer, value = highest committed ID)
-- KEYS[3 .. 2+ns]      -> state records (strings whose layout is Go's alone, see
--                         internal/record: this script only compares the start
--                         it is given and SETs the whole record it is given)
-- KEYS[3+ns .. ]       -> publish target streams
--
-- ARGV[1]              -> group
-- ARGV[2]              -> consumer
-- ARGV[3]              -> ne, number of entries
-- ARGV[4]              -> ns, number of state records
-- ARGV[5]              -> nc, number of delivery-count runs
-- ARGV[6]              -> ng, number of publish groups
-- ARGV[7]              -> highest entry ID of the batch (the new committed offset)
-- ARGV[8]              -> lowest entry ID of the batch
-- ARGV[9]              -> token of this commit, unique: written into every state record
-- then ne entry IDs, ascending where possible (the ownership check walks them
--                         beside the pending list, looking up any out of order)
-- then nc pairs        -> delivery count seen at delivery, run length: the
--                         counts of the entries in order (runs add up to ne)
-- then ns triples      -> the start of the record the handler read, "<version> <token> "
--                         ("" = absent, "-" = not checked: a partition's lease
--                         holder, see internal/rdb.Record), the index of its last byte, and the
--                         whole record to write (version + 1, this commit's token)
-- then ng groups       -> run r, target index t (KEYS[2+ns+t]), field count n, then
--                         r publishes of n field/value pairs each, all to that target
--
-- Returns one of:
--   {0}                    committed
--   {1, i, ...}            NOT_OWNED: entries i are not pending for this consumer
--                          with the delivery count seen (acked already, claimed, or
--                          re-delivered since)
--   {2, i, ...}            VERSION_CONFLICT: state records i have another version or
--                          token (another history: a rollback then other commits can
--                          bring a record back to the same version with other data)
--   {3, t, ...}            WRONG_TYPE: publish targets t exist and are not streams,
--                          or are the offsets hash or a state record of this commit
--   error WRONGTYPE        the offsets hash or a state record has another type
--   error NOPERM           the user may not run one of the writes (checked for all of
--                          them first, where Redis has redis.acl_check_cmd)
-- Nothing is written unless the reply is {0}: every check runs before any write.

local group, consumer = ARGV[1], ARGV[2]
local ne, ns, nc, ng = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local offset, token = ARGV[7], ARGV[9]
local ids = 10 -- ARGV[ids + i - 1] is entry i's ID
local a = ids + ne -- the delivery-count runs

-- Phase 1: checks. No write may come before the last one.
-- Ownership: one XPENDING over the batch's ID range, filtered to this
-- consumer, gives each entry's delivery count. The entries and the rows are
-- both in ID order, so they are walked side by side; an entry out of order
-- is looked up in a table of the rows, and only if the reply was cut by its
-- count limit are the entries it missed looked up one by one.
local bad = {}
if ne > 0 then
  local limit = ne + 64
  local rows = redis.call('XPENDING', KEYS[1], group, ARGV[8], offset, limit, consumer)
  local have
  local i, j = 1, 1
  for _ = 1, nc do
    local want, run = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    for _ = 1, run do
      local id = ARGV[ids + i - 1]
      local row = rows[j]
      local n
      if row and row[1] == id then
        n = row[4]
        j = j + 1
      else
        if not have then
          have = {}
          for _, r in ipairs(rows) do have[r[1]] = r[4] end
        end
        n = have[id]
        if n == nil and #rows >= limit then
          local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
          local r = p[1]
          if r and r[2] == consumer then n = r[4] end
        end
      end
      if n ~= want then
        bad[#bad + 1] = i
      end
      i = i + 1
    end
  end
  if i ~= ne + 1 then
    return redis.error_reply('ERR streamtx commit: delivery-count runs cover ' .. (i - 1) .. ' entries, not ' .. ne)
  end
end
if #bad > 0 then
  return {1, unpack(bad)}
end

-- streamtx's own keys must hold what it put there: a hash or nothing. (The
-- state records' GETRANGE below fails on another type, before any write; the
-- offsets hash is only read after the writes, so check it now.)
local function kind(key)
  local ty = redis.call('TYPE', key)
  return ty.ok or ty
end
local offsetsType = kind(KEYS[2])
if offsetsType ~= 'hash' and offsetsType ~= 'none' then
  return redis.error_reply('WRONGTYPE streamtx key ' .. KEYS[2] .. ' holds a ' .. offsetsType .. ', not a hash; nothing was written')
end

local stateArg = a
for i = 1, ns do
  local expect = ARGV[a]
  if expect == '-' then
    -- not checked
  elseif expect == '' then
    -- absent: GETRANGE of an absent key is empty, of a record never
    if redis.call('GETRANGE', KEYS[2 + i], '0', '0') ~= '' then bad[#bad + 1] = i end
  elseif redis.call('GETRANGE', KEYS[2 + i], '0', ARGV[a + 1]) ~= expect then
    bad[#bad + 1] = i
  end
  a = a + 3
end
if #bad > 0 then
  return {2, unpack(bad)}
end

-- A target must be a stream or absent, and not one of the keys this commit
-- writes (an absent one would be created by the SET or HSET first).
local own = {}
for i = 2, 2 + ns do own[KEYS[i]] = true end
local nt = #KEYS - 2 - ns
for t = 1, nt do
  local key = KEYS[2 + ns + t]
  local ty = kind(key)
  if own[key] or (ty ~= 'stream' and ty ~= 'none') then
    bad[#bad + 1] = t
  end
end
if #bad > 0 then
  return {3, unpack(bad)}
end

-- Redis checks ACLs at every call: a write refused half-way would leave half
-- a commit. Ask for every call of phase 2 first (redis.acl_check_cmd is Redis
-- 7.0 and later; without it, as on miniredis, there are no such ACLs).
if redis.acl_check_cmd then
  local function denied(...)
    if redis.acl_check_cmd(...) then return nil end
    local what = {...}
    return redis.error_reply('NOPERM streamtx commit: this user may not run ' .. what[1] ..
      ' on key ' .. what[2] .. '; nothing was written')
  end
  local err
  for i = 1, ns do
    err = err or denied('SET', KEYS[2 + i], '')
  end
  for t = 1, nt do
    err = err or denied('XADD', KEYS[2 + ns + t], '*', 'f', 'v')
  end
  err = err or denied('HGET', KEYS[2], consumer) or denied('HSET', KEYS[2], consumer, offset)
  if ne > 0 then
    err = err or denied('XACK', KEYS[1], group, ARGV[ids])
  end
  if err then return err end
end

-- Phase 2: writes.
a = stateArg
-- Every argument is passed on as the string it came as: a Lua number handed
-- to redis.call is formatted first, which costs more than the write itself.
for i = 1, ns do
  redis.call('SET', KEYS[2 + i], ARGV[a + 2])
  a = a + 3
end

for _ = 1, ng do
  local r, key, w = tonumber(ARGV[a]), KEYS[2 + ns + tonumber(ARGV[a + 1])], 2 * tonumber(ARGV[a + 2])
  a = a + 3
  for _ = 1, r do
    redis.call('XADD', key, '*', unpack(ARGV, a, a + w - 1))
    a = a + w
  end
end

-- The committed offset only moves forward: compare IDs as ms-seq integers.
local function less(x, y)
  local xm, xs = string.match(x, '^(%d+)-(%d+)$')
  local ym, ys = string.match(y, '^(%d+)-(%d+)$')
  if not xm or not ym then return false end
  if #xm ~= #ym then return #xm < #ym end
  if xm ~= ym then return xm < ym end
  if #xs ~= #ys then return #xs < #ys end
  return xs < ys
end
local prev = redis.call('HGET', KEYS[2], consumer)
if not prev or less(prev, offset) then
  redis.call('HSET', KEYS[2], consumer, offset)
end

if ne > 0 then
  redis.call('XACK', KEYS[1], group, unpack(ARGV, ids, ids + ne - 1))
end
return {0}
