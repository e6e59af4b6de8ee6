-- Read one event and where it is: KEYS: due, payload, leases, result key; ARGV: id
-- Returns {value or false, lease or false, due score or false, result or false}.
local due, payload, leases, result_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
local value = redis.call('HGET', payload, id)
local lease = redis.call('HGET', leases, id)
local score = false
if value then score = redis.call('ZSCORE', due, string.sub(value, 1, 9) .. id) end
return {value, lease, score, redis.call('GET', result_key)}
