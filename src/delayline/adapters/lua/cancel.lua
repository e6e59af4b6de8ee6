-- Cancel a pending event. One already leased is firing and cannot be recalled; a newer
-- version of it waiting for the firing to end (in ``next``) is cancelled.
-- KEYS: due, payload, counts, results (current bucket), next
-- ARGV: id, result ttl seconds, now_us
-- Returns 1 if cancelled, 0 if not pending here.
local due, payload, counts, results, nxt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call('HDEL', nxt, id) == 1 then
  redis.call('HINCRBY', counts, 'cancelled', 1)
  return 1
end
local value = redis.call('HGET', payload, id)
if not value then return 0 end
if redis.call('ZREM', due, member_of(value, id)) == 0 then return 0 end
redis.call('HDEL', payload, id)
redis.call('HINCRBY', counts, 'cancelled', 1)
if ttl > 0 then
  redis.call('HSET', results, id, 'cancelled|' .. now .. '||')
  redis.call('EXPIRE', results, 2 * ttl)
end
return 1
