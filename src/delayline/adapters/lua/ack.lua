-- Record the final state of events still leased under token ARGV[1].
-- KEYS: inflight, leases, payload, counts, results (current bucket), next, due, seq
-- ARGV: token, result ttl seconds (0: remember nothing), now_us, status, reason, channel, ids...
-- Returns how many events were acknowledged (a stale token acknowledges nothing).
-- The outcome is remembered as ``status|now|revision|reason``. A newer version that arrived
-- while the event was firing (in ``next``) goes into the due set now.
local inflight, leases, payload, counts, results, nxt, due =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local token, ttl, status, channel = ARGV[1], tonumber(ARGV[2]), ARGV[4], ARGV[6]
local head = status .. '|' .. ARGV[3] .. '|'
local tail = '|' .. ARGV[5]
local acked = {}
for start = 7, #ARGV, 500 do
  local ids = {unpack(ARGV, start, math.min(start + 499, #ARGV))}
  local held = redis.call('HMGET', leases, unpack(ids))
  for j = 1, #ids do
    if held[j] == token then acked[#acked + 1] = ids[j] end
  end
end
local n = #acked
if n == 0 then return 0 end
local woke = false
for start = 1, n, 500 do
  local chunk = {unpack(acked, start, math.min(start + 499, n))}
  local values = redis.call('HMGET', payload, unpack(chunk))
  local waiting = redis.call('HMGET', nxt, unpack(chunk))
  redis.call('ZREM', inflight, unpack(chunk))
  redis.call('HDEL', leases, unpack(chunk))
  redis.call('HDEL', payload, unpack(chunk))
  local fields = {}
  for j, id in ipairs(chunk) do
    if ttl > 0 then
      fields[#fields + 1] = id
      fields[#fields + 1] = head .. revision_of(values[j] or '') .. tail
    end
    if waiting[j] then
      install_next(due, payload, KEYS[8], id, waiting[j])
      redis.call('HDEL', nxt, id)
      woke = true
    end
  end
  if ttl > 0 then redis.call('HSET', results, unpack(fields)) end
end
if ttl > 0 then redis.call('EXPIRE', results, 2 * ttl) end
redis.call('HINCRBY', counts, status, n)
if woke then
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[2] then redis.call('PUBLISH', channel, first[2]) end
end
return n
