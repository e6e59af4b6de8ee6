-- Record the final state of events still leased under token ARGV[1].
-- KEYS: inflight, leases, payload, counts, results (current bucket)
-- ARGV: token, result ttl seconds (0: remember nothing), now_us, status, reason, ids...
-- Returns how many events were acknowledged (a stale token acknowledges nothing).
-- A lease is the bare token; ``token|score`` is the format before 2026-11 (still honoured).
local inflight, leases, payload, counts, results = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, ttl, status = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local legacy = token .. '|'
local result = status .. '|' .. ARGV[3] .. '|' .. ARGV[5]
local acked = {}
for start = 6, #ARGV, 500 do
  local ids = {unpack(ARGV, start, math.min(start + 499, #ARGV))}
  local held = redis.call('HMGET', leases, unpack(ids))
  for j = 1, #ids do
    local lease = held[j]
    if lease and (lease == token or string.sub(lease, 1, #legacy) == legacy) then
      acked[#acked + 1] = ids[j]
    end
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
