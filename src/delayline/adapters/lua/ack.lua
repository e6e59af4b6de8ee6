-- Record the final state of events still leased under token ARGV[1].
-- KEYS: inflight, leases, payload, counts, results (current bucket)
-- ARGV: token, result ttl seconds (0: remember nothing), now_us, status, reason, ids...
-- Returns how many events were acknowledged (a stale token acknowledges nothing).
local inflight, leases, payload, counts, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, ttl, status = ARGV[1] .. '|', tonumber(ARGV[2]), ARGV[4]
local result = status .. '|' .. ARGV[3] .. '|' .. ARGV[5]
local acked = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local lease = redis.call('HGET', leases, id)
  if lease and string.sub(lease, 1, #token) == token then
    acked[#acked + 1] = id
  end
end
local n = #acked
if n == 0 then return 0 end
for start = 1, n, 500 do
  local chunk = {unpack(acked, start, math.min(start + 499, n))}
  redis.call('ZREM', inflight, unpack(chunk))
  redis.call('HDEL', leases, unpack(chunk))
  redis.call('HDEL', payload, unpack(chunk))
  if ttl > 0 then
    local fields = {}
    for _, id in ipairs(chunk) do
      fields[#fields + 1] = id
      fields[#fields + 1] = result
    end
    redis.call('HSET', results, unpack(fields))
  end
end
if ttl > 0 then redis.call('EXPIRE', results, 2 * ttl) end
redis.call('HINCRBY', counts, status, n)
return n
