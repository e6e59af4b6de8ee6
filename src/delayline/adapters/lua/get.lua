-- Read one event and where it is.
-- KEYS: due, payload, leases, results (current bucket), results (previous bucket); ARGV: id
-- Returns {value or false, lease or false, due score or false, result or false}.
-- The due-set member of a stored value: values of priority-0 events start with '{' and
-- carry no prefix (9 bytes less per event); others start with their 9-byte member prefix.
local function member_of(value, id)
  if string.byte(value, 1) == 123 then return '7fffffff:' .. id end
  return string.sub(value, 1, 9) .. id
end
local due, payload, leases = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local value = redis.call('HGET', payload, id)
local lease = redis.call('HGET', leases, id)
local score = false
if value then score = redis.call('ZSCORE', due, member_of(value, id)) end
local result = redis.call('HGET', KEYS[4], id) or redis.call('HGET', KEYS[5], id)
return {value, lease, score, result}
