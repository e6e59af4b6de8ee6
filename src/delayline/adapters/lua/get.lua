-- Read one event and where it is.
-- KEYS: due, payload, leases, results (current bucket), results (previous bucket); ARGV: id
-- Returns {value or false, lease or false, due score or false, result or false}.
local due, payload, leases = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local value = redis.call('HGET', payload, id)
local lease = redis.call('HGET', leases, id)
local score = false
if value then score = redis.call('ZSCORE', due, member_of(value, id)) end
local result = redis.call('HGET', KEYS[4], id) or redis.call('HGET', KEYS[5], id)
return {value, lease, score, result}
