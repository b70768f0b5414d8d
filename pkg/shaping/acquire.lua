-- acquire.lua: the leased connection semaphore of one destination. Every
-- key belongs to the same destination ({dest} hash tag).
--
-- KEYS[1] leases (sorted set: member = lease id, score = expiry, ms by Redis TIME)
-- KEYS[2] meta (hash: the configured limits, for Status)
--
-- ARGV[1] "acquire", "renew" or "release"
-- ARGV[2] lease id
-- ARGV[3] ttl, ms
-- ARGV[4] connection limit
-- ARGV[5] "1" to (re)write meta from ARGV[6..11]
-- ARGV[6..11] name, rate N, rate Per (ns), burst, connections, meta ttl (ms)
--
-- Returns 1 when the lease was taken (acquire), extended (renew) or removed
-- (release), 0 otherwise: every slot held, the lease gone, or already
-- released.

local op, id = ARGV[1], ARGV[2]
if op == 'release' then
  return redis.call('ZREM', KEYS[1], id)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], 'name', ARGV[6], 'n', ARGV[7], 'per', ARGV[8],
    'burst', ARGV[9], 'conns', ARGV[10])
  redis.call('PEXPIRE', KEYS[2], ARGV[11])
end

-- Expired leases belong to workers that stopped renewing: reclaim them.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))

local ok = 0
local expiry = string.format('%.0f', now + tonumber(ARGV[3]))
if op == 'acquire' then
  if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
    redis.call('ZADD', KEYS[1], expiry, id)
    ok = 1
  end
elseif op == 'renew' then
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, id)
    ok = 1
  end
else
  return redis.error_reply('acquire.lua: unknown op ' .. op)
end

if ok == 1 then
  -- The set lives as long as its longest lease.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.max(1, tonumber(last[2]) - now)))
end
return ok
