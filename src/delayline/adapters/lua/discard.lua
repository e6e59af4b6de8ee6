-- Remove a pending event without remembering it (the sync taking back a stale copy).
-- KEYS: due, payload; ARGV: id, then optionally the value expected (without member prefix):
-- when given, the event is removed only if its stored value is still exactly that (the copy
-- the caller wrote, not one a user put there since). Returns 1 if removed.
local value = redis.call('HGET', KEYS[2], ARGV[1])
if not value then return 0 end
if ARGV[2] ~= nil and string.sub(value, PREFIX_LEN + 1) ~= ARGV[2] then return 0 end
if redis.call('ZREM', KEYS[1], member_of(value, ARGV[1])) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
