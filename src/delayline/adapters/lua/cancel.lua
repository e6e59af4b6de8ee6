-- Cancel a pending event (one already leased is firing and cannot be recalled).
-- KEYS: due, payload, counts, results (current bucket)
-- ARGV: id, result ttl seconds, now_us
-- Returns 1 if cancelled, 0 if not pending here.
-- The due-set member of a stored value: values of priority-0 events start with '{' and
-- carry no prefix (9 bytes less per event); others start with their 9-byte member prefix.
local function member_of(value, id)
  if string.byte(value, 1) == 123 then return '7fffffff:' .. id end
  return string.sub(value, 1, 9) .. id
end
local due, payload, counts, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local value = redis.call('HGET', payload, id)
if not value then return 0 end
if redis.call('ZREM', due, member_of(value, id)) == 0 then return 0 end
redis.call('HDEL', payload, id)
redis.call('HINCRBY', counts, 'cancelled', 1)
if ttl > 0 then
  redis.call('HSET', results, id, 'cancelled|' .. now .. '|')
  redis.call('EXPIRE', results, 2 * ttl)
end
return 1
