-- throttle.lua: a throttling reply from one destination cuts its rate
-- factor, unless the last cut is more recent than the debounce period.
--
-- KEYS[1] adaptive state (hash: f = factor set at the cut, at = its time in
--         µs by Redis TIME, reason)
--
-- ARGV[1] Cut, ARGV[2] Floor, ARGV[3] Debounce (µs), ARGV[4] Hold (µs),
-- ARGV[5] Step, ARGV[6] StepEvery (µs), ARGV[7] reason
--
-- Returns {cut 0|1, factor in force after (string, %.17g), now µs, factor
-- before (string)}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cut, floor, debounce = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hold, step, every = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

-- The factor in force: the same formula as Adaptive.Factor in shaping.go.
local factor = 1
local a = redis.call('HMGET', KEYS[1], 'f', 'at')
local at = a[2] and tonumber(a[2])
if a[1] and at then
  local f = tonumber(a[1])
  if f < 1 then
    factor = math.max(f, floor)
    local since = now - at - hold
    if since > 0 and every > 0 then
      factor = math.min(1, factor + math.floor(since / every) * step)
    end
  end
end

local before = string.format('%.17g', factor)
if at and now - at < debounce then
  return {0, before, now, before}
end

-- Cutting from the factor in force, not from the last cut's: a destination
-- that throttles again while recovering drops from where it had got to.
factor = math.max(factor * cut, floor)
redis.call('HSET', KEYS[1], 'f', string.format('%.17g', factor), 'at', string.format('%.0f', now), 'reason', ARGV[7])

-- Keep the state until the factor is back to 1 (one spare step against
-- rounding) and at least for the debounce period; without recovery, keep it.
if step > 0 and every > 0 then
  local life = math.max(hold + (math.ceil((1 - factor) / step) + 1) * every, debounce)
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(life / 1000) + 1))
else
  redis.call('PERSIST', KEYS[1])
end
return {1, string.format('%.17g', factor), now, before}
