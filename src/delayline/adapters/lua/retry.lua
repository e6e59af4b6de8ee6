-- Give a leased event back to the due set at a later time, with its updated payload; a newer
-- version that arrived while it was firing (in ``next``) takes its place instead.
-- KEYS: inflight, leases, payload, due, next, seq
-- ARGV: token, id, score, value (without member prefix: the current one is kept), channel
-- Returns 1, or 0 when the lease is no longer held under this token.
local inflight, leases, payload, due, nxt, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, id, score, body, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', leases, id) ~= token then return 0 end
redis.call('ZREM', inflight, id)
redis.call('HDEL', leases, id)
local waiting = redis.call('HGET', nxt, id)
local member
if waiting then
  redis.call('HDEL', nxt, id)
  score = install_next(due, payload, seq, id, waiting)
  member = member_of(redis.call('HGET', payload, id), id)
else
  local current = redis.call('HGET', payload, id)
  local value = string.sub(current, 1, PREFIX_LEN) .. keep_revision(current, body)
  member = member_of(value, id)
  redis.call('HSET', payload, id, value)
  redis.call('ZADD', due, score, member)
end
local head = redis.call('ZRANGE', due, 0, 0)
if head[1] == member then redis.call('PUBLISH', channel, score) end
return 1
