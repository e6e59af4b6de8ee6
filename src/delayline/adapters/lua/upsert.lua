-- Upsert events by schedule id: insert, replace, or ignore a version that is not newer than
-- the one stored or remembered here (is_newer).
-- KEYS: due, payload, counts, results (current bucket), results (previous bucket), seq,
--       leases, next
-- ARGV: channel, then per event: mode, priority part (8 hex digits) .. id, score, value
-- (without member prefix). Mode 'n': the event is due in this tier, store it here. Mode 'f':
-- it is due in the long-term tier; only take an older pending copy out of here.
-- Returns per event: 0 ignored (this version or a newer one is here or remembered), 1 not
-- here before (n: inserted), 2 replaced a pending copy (f: removed it), 3 the id is being
-- fired now (n: this version waits in ``next`` and the ack, retry or reap that ends the
-- firing puts it in the due set; f: the firing goes on), 4 scheduled again after an outcome.
local due, payload, counts, recent, older, seq, leases, nxt =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local channel = ARGV[1]
local out = {}
local min_score = nil
local stored_n, replaced_n = 0, 0
for i = 2, #ARGV, 4 do
  local mode, id = ARGV[i], string.sub(ARGV[i + 1], 9)
  local score, body = ARGV[i + 2], ARGV[i + 3]
  local incoming = string.match(body, '^{"r":"([^"]*)"') or ''
  local function store()
    local value = prefix_of(string.sub(ARGV[i + 1], 1, 8), redis.call('INCR', seq)) .. body
    redis.call('HSET', payload, id, value)
    redis.call('ZADD', due, score, member_of(value, id))
    local s = tonumber(score)
    if min_score == nil or s < min_score then min_score = s end
  end
  local current = redis.call('HGET', payload, id)
  local code
  if current then
    local waiting = redis.call('HGET', nxt, id)
    local here = revision_of(current)
    if waiting then here = string.match(waiting, '^[^ ]* ........{"r":"([^"]*)"') or '' end
    if not is_newer(incoming, here) then
      code = 0
    elseif redis.call('HEXISTS', leases, id) == 1 then
      code = 3
      if mode == 'n' then
        redis.call('HSET', nxt, id, score .. ' ' .. string.sub(ARGV[i + 1], 1, 8) .. body)
      else
        redis.call('HDEL', nxt, id)
      end
    else
      code = 2
      redis.call('ZREM', due, member_of(current, id))
      redis.call('HDEL', payload, id)
      if mode == 'n' then store() end
    end
  else
    local result = redis.call('HGET', recent, id) or redis.call('HGET', older, id)
    if result and not is_newer(incoming, result_revision(result)) then
      code = 0
    else
      code = result and 4 or 1
      if mode == 'n' then store() end
    end
  end
  out[#out + 1] = code
  if mode == 'n' and (code == 1 or code == 4) then stored_n = stored_n + 1 end
  if code == 2 or code == 3 then replaced_n = replaced_n + 1 end
end
if stored_n > 0 then redis.call('HINCRBY', counts, 'scheduled', stored_n) end
if replaced_n > 0 then redis.call('HINCRBY', counts, 'replaced', replaced_n) end
if min_score ~= nil then
  local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if head[2] ~= nil and tonumber(head[2]) >= min_score then
    redis.call('PUBLISH', channel, head[2])
  end
end
return out
