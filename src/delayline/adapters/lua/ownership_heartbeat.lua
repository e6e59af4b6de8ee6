-- Mark a node alive and list the nodes alive, on the server's clock (no agreement between
-- the nodes' clocks is needed).
-- KEYS[1] the membership ZSET (node -> expiry, epoch ms)
-- ARGV[1] node id, ARGV[2] time to live in ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
-- The set lives as long as its longest-lived member, so a deployment that stops leaves nothing.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return redis.call('ZRANGE', KEYS[1], 0, -1)
