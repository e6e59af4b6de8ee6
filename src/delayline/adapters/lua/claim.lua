-- Lease up to ARGV[2] events due at ARGV[1] to the holder of token ARGV[4] until ARGV[3].
-- KEYS: due, payload, inflight, leases
-- Returns a flat list: id, score, value for each claimed event, earliest (then highest
-- priority, then earliest submission: the member prefix, _member_of.lua) first, then the
-- due score of the earliest event left ('' if none): the caller's next wake-up, no extra trip.
local due, payload, inflight, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, limit, deadline, token = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local members = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local count = #members / 2
local function next_due()
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  return head[2] or ''
end
if count == 0 then return {next_due()} end
redis.call('ZREMRANGEBYRANK', due, 0, count - 1)
local out = {}
local chunk = 500
for start = 1, count, chunk do
  local stop = math.min(start + chunk - 1, count)
  local ids, zargs, hargs = {}, {}, {}
  for j = start, stop do
    local id = string.sub(members[2 * j - 1], PREFIX_LEN + 1)
    ids[#ids + 1] = id
    zargs[#zargs + 1] = deadline
    zargs[#zargs + 1] = id
    hargs[#hargs + 1] = id
    hargs[#hargs + 1] = token
  end
  redis.call('ZADD', inflight, unpack(zargs))
  redis.call('HSET', leases, unpack(hargs))
  local values = redis.call('HMGET', payload, unpack(ids))
  for j = 1, #ids do
    out[#out + 1] = ids[j]
    out[#out + 1] = members[2 * (start + j - 1)]
    out[#out + 1] = values[j] or ''
  end
end
out[#out + 1] = next_due()
return out
