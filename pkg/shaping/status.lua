-- status.lua: one destination's live state, read only.
--
-- KEYS[1] meta, KEYS[2] adaptive state, KEYS[3] leases (see reserve.lua,
-- throttle.lua and acquire.lua)
--
-- Returns {name, rate N, rate Per (ns), burst, connections, cut factor, cut
-- time µs, reason, leases in use, now µs}, missing values as "". A KEYS[1]
-- that is not a meta hash (a job's key that happens to match the SCAN
-- pattern) returns {}.

if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return {}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local m = redis.call('HMGET', KEYS[1], 'name', 'n', 'per', 'burst', 'conns')
local a = redis.call('HMGET', KEYS[2], 'f', 'at', 'reason')
local inuse = 0
if redis.call('TYPE', KEYS[3]).ok == 'zset' then
  inuse = redis.call('ZCOUNT', KEYS[3], '(' .. string.format('%.0f', now_ms), '+inf')
end
return {m[1] or '', m[2] or '', m[3] or '', m[4] or '', m[5] or '',
  a[1] or '', a[2] or '', a[3] or '', inuse, string.format('%.0f', now_us)}
