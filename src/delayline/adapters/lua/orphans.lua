-- Remove payloads that neither the due set nor a lease refers to, and inflight entries
-- without a lease (left by hand edits or partial restores; the scripts never leave them).
-- KEYS: due, payload, inflight, leases; ARGV: ids to check. Returns how many were removed.
-- The due-set member of a stored value: values of priority-0 events start with '{' and
-- carry no prefix (9 bytes less per event); others start with their 9-byte member prefix.
local function member_of(value, id)
  if string.byte(value, 1) == 123 then return '7fffffff:' .. id end
  return string.sub(value, 1, 9) .. id
end
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
