-- Set aside leased events whose payload the key ring cannot open: out of the due and
-- inflight sets (so nothing claims them again), their stored value kept in the parked hash
-- after the reason and a newline, until a key rotation opens and schedules them again.
-- A newer version that came while the id was leased (in ``next``) takes its place in the due
-- set, as after any firing.
-- KEYS: inflight, leases, payload, parked, due, next, seq; ARGV: token, then (id, reason)
-- pairs. Returns how many were parked (those still leased under the token).
local inflight, leases, payload, parked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local due, next, seq = KEYS[5], KEYS[6], KEYS[7]
local n = 0
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', leases, id) == ARGV[1] then
    local value = redis.call('HGET', payload, id)
    if value then
      redis.call('HSET', parked, id, ARGV[i + 1] .. '\n' .. value)
      redis.call('HDEL', payload, id)
    end
    redis.call('ZREM', inflight, id)
    redis.call('HDEL', leases, id)
    local waiting = redis.call('HGET', next, id)
    if waiting then
      redis.call('HDEL', next, id)
      install_next(due, payload, seq, id, waiting)
    end
    n = n + 1
  end
end
return n
