-- Return events whose lease expired before ARGV[1] to the due set, due at once (ARGV[1]); a
-- newer version that arrived while one was firing (in ``next``) returns instead of it.
-- KEYS: inflight, leases, payload, due, next, seq
-- ARGV: now_us, limit, channel
-- Returns how many were returned; the old token can no longer acknowledge them.
local inflight, leases, payload, due, nxt, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = ARGV[1]
local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, id in ipairs(expired) do
  local lease = redis.call('HGET', leases, id)
  local value = redis.call('HGET', payload, id)
  local waiting = redis.call('HGET', nxt, id)
  redis.call('ZREM', inflight, id)
  redis.call('HDEL', leases, id)
  if waiting then
    redis.call('HDEL', nxt, id)
    install_next(due, payload, seq, id, waiting)
    n = n + 1
  elseif lease and value then
    redis.call('ZADD', due, now, member_of(value, id))
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[3], now) end
return n
