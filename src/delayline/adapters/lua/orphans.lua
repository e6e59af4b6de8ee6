-- Remove payloads that neither the due set nor a lease refers to, and inflight entries
-- without a lease (left by hand edits or partial restores; the scripts never leave them).
-- KEYS: due, payload, inflight, leases; ARGV: ids to check. Returns how many were removed.
local due, payload, inflight, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n = 0
for _, id in ipairs(ARGV) do
  local value = redis.call('HGET', payload, id)
  local leased = redis.call('HEXISTS', leases, id) == 1
  if value and not leased and not redis.call('ZSCORE', due, member_of(value, id)) then
    redis.call('HDEL', payload, id)
    n = n + 1
  end
  if not leased and redis.call('ZREM', inflight, id) == 1 then n = n + 1 end
end
return n
