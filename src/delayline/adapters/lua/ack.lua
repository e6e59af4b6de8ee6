-- Record the final state of events still leased under token ARGV[1].
-- KEYS: inflight, leases, payload, counts, then one result key per event
-- ARGV: token, result ttl seconds, now_us, then per event: id, status, reason
-- Returns how many events were acknowledged (a stale token acknowledges nothing).
local inflight, leases, payload, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, ttl, now = ARGV[1] .. '|', tonumber(ARGV[2]), ARGV[3]
local n = 0
for i = 4, #ARGV, 3 do
  local id, status, reason = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local lease = redis.call('HGET', leases, id)
  if lease and string.sub(lease, 1, #token) == token then
    redis.call('ZREM', inflight, id)
    redis.call('HDEL', leases, id)
    redis.call('HDEL', payload, id)
    redis.call('HINCRBY', counts, status, 1)
    if ttl > 0 then
      redis.call('SET', KEYS[4 + (i - 1) / 3], status .. '|' .. now .. '|' .. reason, 'EX', ttl)
    end
    n = n + 1
  end
end
return n
