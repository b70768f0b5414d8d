-- heartbeat.lua: worker liveness. Its one key belongs to no destination.
--
-- KEYS[1] live workers (sorted set: member = worker id, score = expiry, ms
--         by Redis TIME)
-- ARGV[1] worker id, ARGV[2] ttl (ms), ARGV[3] "leave" to deregister
--
-- Returns the number of live workers, this one included unless leaving.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local n = redis.call('ZCARD', KEYS[1])
if n > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.max(1, tonumber(last[2]) - now)))
end
return n
