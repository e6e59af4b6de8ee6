-- Take each free shard lease under a new fencing token.
-- KEYS: pairs (lease key, fence counter key), one pair per shard
-- ARGV[1] node id, ARGV[2] time to live in ms
-- Returns per shard the new token, or 0 when another holder has the lease. The counter never
-- expires and only grows, so every acquisition of a shard gets a larger token than the last.
-- A lease still held under this node id is taken again at once: node ids are unique among
-- running processes, so its holder is this node's previous process, which is gone.
local own = ARGV[1] .. ':'
local taken = {}
for i = 1, #KEYS, 2 do
  local token = 0
  local holder = redis.call('GET', KEYS[i])
  if not holder or string.sub(holder, 1, #own) == own then
    token = redis.call('INCR', KEYS[i + 1])
    redis.call('SET', KEYS[i], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
  end
  taken[#taken + 1] = token
end
return taken
