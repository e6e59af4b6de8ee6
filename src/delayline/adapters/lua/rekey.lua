-- Replace stored values that are still exactly as read (key rotation's compare-and-set).
-- KEYS: a hash; ARGV: (id, value read, new value) triples. Returns how many were replaced.
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
