-- Delete each lease that still holds exactly the value given (compare and delete): a holder
-- whose lease already passed to another node deletes nothing.
-- KEYS: lease keys; ARGV[i] the value expected in KEYS[i]
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    released = released + redis.call('DEL', KEYS[i])
  end
end
return released
