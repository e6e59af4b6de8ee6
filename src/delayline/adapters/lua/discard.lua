-- Remove a pending event without remembering it (the sync taking back a stale copy).
-- KEYS: due, payload; ARGV: id. Returns 1 if removed.
local value = redis.call('HGET', KEYS[2], ARGV[1])
if not value then return 0 end
if redis.call('ZREM', KEYS[1], string.sub(value, 1, 9) .. ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
