-- Give a leased event back to the due set at a later time, with its updated payload.
-- KEYS: inflight, leases, payload, due
-- ARGV: token, id, score, member, value, channel
-- Returns 1, or 0 when the lease is no longer held under this token.
local inflight, leases, payload, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, id, score, member, value, channel =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local lease = redis.call('HGET', leases, id)
if not lease or (lease ~= token and string.sub(lease, 1, #token + 1) ~= token .. '|') then
  return 0
end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
redis.call('HSET', payload, id, value)
redis.call('ZADD', due, score, member)
local head = redis.call('ZRANGE', due, 0, 0)
if head[1] == member then redis.call('PUBLISH', channel, score) end
return 1
