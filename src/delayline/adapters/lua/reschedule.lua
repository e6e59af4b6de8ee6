-- Move a pending event to a new due time, if its payload is still the one the caller read.
-- KEYS: due, payload
-- ARGV: id, expected value, new score, new value (without member prefix: the current one is
-- kept), channel
-- Returns 1 if moved, 0 if not pending here, -1 if the payload changed meanwhile.
local due, payload = KEYS[1], KEYS[2]
local id, expected, score, body, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local current = redis.call('HGET', payload, id)
if not current then return 0 end
local member = member_of(current, id)
if not redis.call('ZSCORE', due, member) then return 0 end
if current ~= expected then return -1 end
redis.call('ZADD', due, score, member)
redis.call('HSET', payload, id, string.sub(current, 1, PREFIX_LEN) .. keep_revision(current, body))
local head = redis.call('ZRANGE', due, 0, 0)
if head[1] == member then redis.call('PUBLISH', channel, score) end
return 1
