-- Extend each lease that still holds exactly the value given (compare and extend).
-- KEYS: lease keys; ARGV[1] time to live in ms, ARGV[1 + i] the value expected in KEYS[i]
-- Returns per shard 1 if extended, 0 if lost (expired, or taken by another node meanwhile).
local kept = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    kept[i] = 1
  else
    kept[i] = 0
  end
end
return kept
