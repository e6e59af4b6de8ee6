-- Insert events unless their schedule_id is pending, leased or remembered as finished.
-- KEYS: due, payload, counts, results (current bucket), results (previous bucket)
-- ARGV: channel, then per event: id, score, member, value
-- Returns one 1 (inserted) or 0 (already there) per event; wakes dispatchers when the
-- earliest due time moved earlier.
local due, payload, counts, recent, older = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel = ARGV[1]
local out = {}
local min_score = nil
local n = 0
for i = 2, #ARGV, 4 do
  local id, score, member, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('HEXISTS', payload, id) == 1 or redis.call('HEXISTS', recent, id) == 1
      or redis.call('HEXISTS', older, id) == 1 then
    out[#out + 1] = 0
  else
    redis.call('HSET', payload, id, value)
    redis.call('ZADD', due, score, member)
    out[#out + 1] = 1
    n = n + 1
    local s = tonumber(score)
    if min_score == nil or s < min_score then min_score = s end
  end
end
if n > 0 then
  redis.call('HINCRBY', counts, 'scheduled', n)
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if head[2] ~= nil and tonumber(head[2]) >= min_score then
    redis.call('PUBLISH', channel, head[2])
  end
end
return out
