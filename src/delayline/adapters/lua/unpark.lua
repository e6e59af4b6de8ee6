-- Forget parked events that were scheduled again, if their parked value is still as read.
-- KEYS: parked; ARGV: (id, value read) pairs. Returns how many were removed.
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
