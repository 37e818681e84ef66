-- members.lua: the membership of a group on a topic. Every running consumer
-- instance heartbeats; an instance whose heartbeat is older than its time to
-- live is no longer a member.
--
-- KEYS[1] -> members sorted set: member = instance ID, score = until (ms,
--            Redis's clock)
--
-- ARGV[1] -> op: "beat" or "leave"
-- ARGV[2] -> instance ID
-- ARGV[3] -> time to live in ms ("beat")
--
-- Returns {now, member, ...}: Redis's time in ms and the live members, this
-- one included after "beat", excluded after "leave".
-- Writes: ZADD or ZREM, ZREMRANGEBYSCORE of expired members.

local key, op, me = KEYS[1], ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if op == 'beat' then
  redis.call('ZADD', key, now + tonumber(ARGV[3]), me)
elseif op == 'leave' then
  redis.call('ZREM', key, me)
else
  return redis.error_reply('ERR members.lua: unknown op ' .. tostring(op))
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local out = {tostring(now)}
for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do out[#out + 1] = m end
return out
