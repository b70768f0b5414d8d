-- reserve.lua: one GCRA decision for one destination, with per-job
-- reservations. Every key belongs to the same destination ({dest} hash tag).
--
-- KEYS[1] TAT (string "tat,epoch": µs by Redis TIME, and the rate epoch it
--         was computed in)
-- KEYS[2] adaptive state (hash: f = factor set at the last cut, at = its time in µs)
-- KEYS[3] meta (hash: the configured limits, for Status)
-- KEYS[4] this job's reservation (string "slot,epoch", µs: void in another
--         rate epoch)
--
-- ARGV[1] emission interval at factor 1, ns (Rate.Interval)
-- ARGV[2] burst, >= 1
-- ARGV[3] "1" if KEYS[4] names a job; "0" takes no reservation
-- ARGV[4] grace, µs: a reservation lives until slot + grace
-- ARGV[5..8] Adaptive Floor, Hold (µs), Step, StepEvery (µs)
-- ARGV[9] how early a reservation may be claimed, µs (capped at one interval)
-- ARGV[10] how late a reservation may be claimed, µs: later, it is void and
--          the job is decided afresh, so that jobs held up together (a
--          slow connection, a starved worker) cannot redeem a run of past
--          slots at once and burst past the rate
-- ARGV[11] "1" to (re)write meta from ARGV[12..17]
-- ARGV[12..17] name, rate N, rate Per (ns), burst, connections, meta ttl (ms)
--
-- Returns {granted 0|1, slot µs, now µs}. When granted, slot is now.
-- Redis TIME is the clock of every decision, so workers with skewed clocks
-- agree (Redis 5+ replicates script effects, which allows TIME before writes).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

if ARGV[11] == '1' then
  redis.call('HSET', KEYS[3], 'name', ARGV[12], 'n', ARGV[13], 'per', ARGV[14],
    'burst', ARGV[15], 'conns', ARGV[16])
  redis.call('PEXPIRE', KEYS[3], ARGV[17])
end

-- The factor and the rate epoch: the same formulas as Adaptive.Factor and
-- Adaptive.Epoch in shaping.go. The epoch is when the factor last changed
-- (the cut, or the latest recovery step), 0 with no cut in force.
local factor, epoch = 1, 0
local a = redis.call('HMGET', KEYS[2], 'f', 'at')
if a[1] and a[2] then
  local f, at = tonumber(a[1]), tonumber(a[2])
  if f < 1 then
    local floor, hold, step, every = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
    factor, epoch = math.max(f, floor), at
    local since = now - at - hold
    if since >= 0 and every > 0 and step > 0 then
      local k = math.min(math.floor(since / every), math.ceil((1 - factor) / step))
      factor = math.min(1, factor + k * step)
      if k > 0 then
        epoch = at + hold + k * every
      end
    end
  end
end

local interval = tonumber(ARGV[1]) / 1000 / factor

local hasjob = ARGV[3] == '1'
if hasjob then
  local v = redis.call('GET', KEYS[4])
  local r
  if v then
    local comma = string.find(v, ',', 1, true)
    r = tonumber(string.sub(v, 1, comma - 1))
    -- A slot reserved under another rate epoch was spaced for another
    -- rate, and one claimed too late would let held-up jobs redeem a run
    -- of past slots at once: both are void, and the job decided afresh.
    if tonumber(string.sub(v, comma + 1)) ~= epoch or now > r + tonumber(ARGV[10]) then
      redis.call('DEL', KEYS[4])
      r = nil
    end
  end
  if r then
    -- A job presenting its reservation goes without taking another slot:
    -- its slot was taken when it was reserved. It may come up to
    -- min(ARGV[9], one interval) early, so that a redelivery timer
    -- firing a hair early costs no extra trip through the queue.
    if now >= r - math.min(tonumber(ARGV[9]), interval) then
      redis.call('DEL', KEYS[4])
      return {1, now, now}
    end
    return {0, r, now}
  end
end

local tau = (tonumber(ARGV[2]) - 1) * interval
-- The schedule is kept per rate epoch: in a new one it restarts from now.
local tat = 0
local tv = redis.call('GET', KEYS[1])
if tv then
  local comma = string.find(tv, ',', 1, true)
  if comma and tonumber(string.sub(tv, comma + 1)) == epoch then
    tat = tonumber(string.sub(tv, 1, comma - 1))
  end
end
if tat < now then
  tat = now
end

-- GCRA: a message conforms when tat - tau <= now; otherwise tat - tau is
-- the earliest time at which it would.
local slot = math.ceil(tat - tau)
local granted = 0
if slot <= now then
  granted = 1
  slot = now
elseif not hasjob then
  -- Nobody could redeem a reservation without a job key: take nothing.
  return {0, slot, now}
end

-- Rounding up keeps the stored TAT on the safe side.
local newtat = math.ceil(tat + interval)
redis.call('SET', KEYS[1], string.format('%.0f,%.0f', newtat, epoch), 'PX', math.ceil((newtat - now) / 1000) + 1)
if granted == 0 then
  redis.call('SET', KEYS[4], string.format('%.0f,%.0f', slot, epoch), 'PX', math.ceil((slot - now + tonumber(ARGV[4])) / 1000))
end
return {granted, slot, now}
