-- A stored value starts with its event's 21-byte due-set member prefix: 8 hex digits of
-- 2^31 - 1 - priority, 12 of the submission sequence, ':'. The member is that prefix and the
-- id, so among equal due times higher priorities sort first, then earlier submissions.
local PREFIX_LEN = 21
local function member_of(value, id)
  return string.sub(value, 1, PREFIX_LEN) .. id
end
-- The prefix for a value submitted now: priority part (8 hex digits) and sequence number.
local function prefix_of(priority_part, seq)
  return priority_part .. string.format('%012x', seq) .. ':'
end
-- A newer version that waited in ``next`` (``score .. ' ' .. priority part .. value``) while
-- its id was being fired goes into the due set with a new sequence number; returns its score.
local function install_next(due, payload, seq, id, waiting)
  local score, rest = string.match(waiting, '^([^ ]*) (.*)$')
  local value = prefix_of(string.sub(rest, 1, 8), redis.call('INCR', seq)) .. string.sub(rest, 9)
  redis.call('HSET', payload, id, value)
  redis.call('ZADD', due, score, member_of(value, id))
  return score
end
