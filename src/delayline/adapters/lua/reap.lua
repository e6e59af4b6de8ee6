-- Return events whose lease expired before ARGV[1] to the due set at their claimed score.
-- KEYS: inflight, leases, payload, due
-- ARGV: now_us, limit, channel
-- Returns how many were returned; the old token can no longer acknowledge them.
local inflight, leases, payload, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
local min_score = nil
for _, id in ipairs(expired) do
  local lease = redis.call('HGET', leases, id)
  local value = redis.call('HGET', payload, id)
  redis.call('ZREM', inflight, id)
  redis.call('HDEL', leases, id)
  if lease and value then
    local score = string.sub(lease, string.find(lease, '|', 1, true) + 1)
    redis.call('ZADD', due, score, string.sub(value, 1, 9) .. id)
    n = n + 1
    if min_score == nil or tonumber(score) < tonumber(min_score) then min_score = score end
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[3], min_score) end
return n
