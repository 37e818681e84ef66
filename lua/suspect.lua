-- suspect.lua: count one more attempt at an entry handled alone because the
-- process holding it died (or paused) too often; the counter expires, so a
-- counter left behind by a process that died goes away by itself.
--
-- KEYS[1] -> the entry's suspect counter (a string holding an integer)
--
-- ARGV[1] -> time to live of the counter, milliseconds
--
-- Returns the number of attempts, this one included.

local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
