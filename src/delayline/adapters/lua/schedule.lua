-- Insert events unless their schedule_id is pending, leased or remembered as finished.
-- KEYS: due, payload, counts, results (current bucket), results (previous bucket)
-- ARGV: channel, then per event: member (9-byte priority prefix + id), score, value
-- Returns one 1 (inserted) or 0 (already there) per event; wakes dispatchers when the
-- earliest due time moved earlier. One HMGET per hash and one ZADD/HSET for the whole call
-- instead of five commands per event: the per-call overhead of redis.call dominates here.
local due, payload, counts, recent, older = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel = ARGV[1]
local ids = {}
for i = 2, #ARGV, 3 do ids[#ids + 1] = string.sub(ARGV[i], 10) end
if #ids == 0 then return {} end
local pending = redis.call('HMGET', payload, unpack(ids))
local finished = redis.call('HMGET', recent, unpack(ids))
local finished_before = redis.call('HMGET', older, unpack(ids))
local out, zargs, hargs, seen = {}, {}, {}, {}
local min_score = nil
for j = 1, #ids do
  local id = ids[j]
  if pending[j] or finished[j] or finished_before[j] or seen[id] then
    out[j] = 0
  else
    seen[id] = true
    local base = 3 * j - 1
    local score = ARGV[base + 1]
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = ARGV[base]
    hargs[#hargs + 1] = id
    hargs[#hargs + 1] = ARGV[base + 2]
    out[j] = 1
    local s = tonumber(score)
    if min_score == nil or s < min_score then min_score = s end
  end
end
if min_score ~= nil then
  redis.call('HSET', payload, unpack(hargs))
  redis.call('ZADD', due, unpack(zargs))
  redis.call('HINCRBY', counts, 'scheduled', #hargs / 2)
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if head[2] ~= nil and tonumber(head[2]) >= min_score then
    redis.call('PUBLISH', channel, head[2])
  end
end
return out
