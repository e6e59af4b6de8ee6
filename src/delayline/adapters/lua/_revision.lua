-- Revisions tell a redelivered or older version of an event from a newer one. A revision is
-- stored as the first field of the value's JSON ({"r":"...", ...}); a remembered outcome keeps
-- it as its third '|' field. Kafka ingress: "partition:offset:timestamp_ms#hash" (hash of the
-- message's key, value and headers); a replace over HTTP or Python: "#" and a hash of the
-- content; none: "".
local function revision_of(value)
  return string.match(value, '^{"r":"([^"]*)"', PREFIX_LEN + 1) or ''
end
local function result_revision(result)
  local _, _, rev = string.find(result, '^[^|]*|[^|]*|([^|]*)')
  return rev or ''
end
-- Whether a version with revision ``incoming`` replaces one with revision ``stored``: not when
-- their content hashes are equal (a redelivery, a producer's retry, the same version again),
-- nor when both are positions in one partition and ``incoming`` is an earlier message (a batch
-- replayed after a crash).
local function is_newer(incoming, stored)
  if incoming == '' or stored == '' then return true end
  local ipos, ihash = string.match(incoming, '^([^#]*)#(.*)$')
  local spos, shash = string.match(stored, '^([^#]*)#(.*)$')
  if ihash == nil or shash == nil then return true end
  if ihash == shash then return false end
  local ip, io, it = string.match(ipos, '^(%d+):(%d+):(%d+)$')
  local sp, so, st = string.match(spos, '^(%d+):(%d+):(%d+)$')
  if ip and sp and ip == sp and tonumber(io) < tonumber(so) and tonumber(it) <= tonumber(st) then
    return false
  end
  return true
end
-- ``body`` (a value without member prefix, written by a caller that decoded ``current``)
-- with the revision of ``current`` kept.
local function keep_revision(current, body)
  local field = string.match(current, '^{"r":"[^"]*",', PREFIX_LEN + 1)
  if field == nil or string.sub(body, 1, 1) ~= '{' then return body end
  return field .. string.sub(body, 2)
end
