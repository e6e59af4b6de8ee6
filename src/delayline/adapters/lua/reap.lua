-- Return events whose lease expired before ARGV[1] to the due set, due at once (ARGV[1]).
-- KEYS: inflight, leases, payload, due
-- ARGV: now_us, limit, channel
-- Returns how many were returned; the old token can no longer acknowledge them.
-- (A lease written before 2026-11 as ``token|score`` returns at its claimed score.)
local inflight, leases, payload, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = ARGV[1]
local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, id in ipairs(expired) do
  local lease = redis.call('HGET', leases, id)
  local value = redis.call('HGET', payload, id)
  redis.call('ZREM', inflight, id)
  redis.call('HDEL', leases, id)
  if lease and value then
    local bar = string.find(lease, '|', 1, true)
    local score = bar and string.sub(lease, bar + 1) or now
    redis.call('ZADD', due, score, member_of(value, id))
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[3], now) end
return n
