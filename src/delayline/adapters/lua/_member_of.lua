-- The due-set member of a stored value: values of priority-0 events start with '{' and
-- carry no prefix (9 bytes less per event); others start with their 9-byte member prefix.
local function member_of(value, id)
  if string.byte(value, 1) == 123 then return '7fffffff:' .. id end
  return string.sub(value, 1, 9) .. id
end
