-- Insert events unless their schedule_id is pending, leased or remembered as finished.
-- KEYS: due, payload, counts, results (current bucket), results (previous bucket), seq
-- ARGV: channel, then per event: priority part (8 hex digits) .. id, score, value (without
-- its member prefix, which is added here with the next submission sequence numbers)
-- Returns one 1 (inserted) or 0 (already there) per event; wakes dispatchers when the
-- earliest due time moved earlier. One HMGET per hash and one ZADD/HSET for the whole call
-- instead of five commands per event: the per-call overhead of redis.call dominates here.
local due, payload, counts, recent, older, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local channel = ARGV[1]
local ids = {}
for i = 2, #ARGV, 3 do ids[#ids + 1] = string.sub(ARGV[i], 9) end
if #ids == 0 then return {} end
local pending = redis.call('HMGET', payload, unpack(ids))
local finished = redis.call('HMGET', recent, unpack(ids))
local finished_before = redis.call('HMGET', older, unpack(ids))
local out, fresh, seen = {}, {}, {}
for j = 1, #ids do
  local id = ids[j]
  if pending[j] or finished[j] or finished_before[j] or seen[id] then
    out[j] = 0
  else
    seen[id] = true
    fresh[#fresh + 1] = j
    out[j] = 1
  end
end
if #fresh == 0 then return out end
local first = redis.call('INCRBY', seq, #fresh) - #fresh
local zargs, hargs = {}, {}
local min_score = nil
for k, j in ipairs(fresh) do
  local base = 3 * j - 1
  local id, score = ids[j], ARGV[base + 1]
  local prefix = prefix_of(string.sub(ARGV[base], 1, 8), first + k)
  zargs[#zargs + 1] = score
  zargs[#zargs + 1] = prefix .. id
  hargs[#hargs + 1] = id
  hargs[#hargs + 1] = prefix .. ARGV[base + 2]
  local s = tonumber(score)
  if min_score == nil or s < min_score then min_score = s end
end
redis.call('HSET', payload, unpack(hargs))
redis.call('ZADD', due, unpack(zargs))
redis.call('HINCRBY', counts, 'scheduled', #fresh)
local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
if head[2] ~= nil and tonumber(head[2]) >= min_score then
  redis.call('PUBLISH', channel, head[2])
end
return out
