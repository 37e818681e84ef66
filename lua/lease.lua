-- lease.lua: a partition's lease, held by one running consumer instance at
-- a time. The lease record is a hash in the partition's slot that never
-- expires: its epoch (the fencing token) grows at every acquisition and must
-- outlive any holder. Expiry is the field "until", in Redis's own clock.
--
-- KEYS[1] -> lease hash: owner (instance ID, "" when free), epoch, until (ms)
--
-- ARGV[1] -> op: "acquire", "renew" or "release"
-- ARGV[2] -> instance ID
-- ARGV[3] -> epoch held ("renew", "release"; ignored by "acquire")
-- ARGV[4] -> time to live in ms ("acquire", "renew")
--
-- Returns:
--   acquire  {1, epoch}            acquired under the new epoch
--            {0, owner, epoch}     held by another live instance
--   renew    1 renewed, 0 lost (another owner or epoch)
--   release  1 released, 0 not held (nothing written)
-- Writes: HINCRBY epoch and HSET (acquire), HSET (renew, release).

local key, op, me, held = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local l = redis.call('HMGET', key, 'owner', 'epoch', 'until')
local owner, epoch, untilms = l[1] or '', l[2] or '0', tonumber(l[3] or '0') or 0

if op == 'acquire' then
  if owner ~= '' and owner ~= me and untilms > now then
    return {0, owner, epoch}
  end
  local e = redis.call('HINCRBY', key, 'epoch', 1)
  redis.call('HSET', key, 'owner', me, 'until', tostring(now + tonumber(ARGV[4])))
  return {1, tostring(e)}
end
if op == 'release' and owner == '' and epoch == held then
  return 1 -- released already: a retry after the reply was lost
end
if owner ~= me or epoch ~= held then
  return 0
end
if op == 'renew' then
  redis.call('HSET', key, 'until', tostring(now + tonumber(ARGV[4])))
  return 1
end
if op == 'release' then
  redis.call('HSET', key, 'owner', '', 'until', '0')
  return 1
end
return redis.error_reply('ERR lease.lua: unknown op ' .. tostring(op))
