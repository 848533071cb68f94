-- Claim each event id for the position it was read at, once within the dedupe window.
-- KEYS: one shard's dedupe buckets, newest first (hashes: event id -> position), then its counters.
-- ARGV[1]: JSON {ids = {{event id, position}, ...}, ttl = seconds the newest bucket lives}
-- An id already claimed at the same position is that record read again (after a crash): it
-- goes on to be applied, and the writer's positions make applying it idempotent. An id claimed
-- at another position, or without a position (""), is a duplicate the shop sent twice: it is
-- skipped. Returns the duplicates; counts new claims as applied and duplicates as skipped.
local p = cjson.decode(ARGV[1])
local buckets = #KEYS - 1
local ids = {}
for i, pair in ipairs(p.ids) do ids[i] = pair[1] end
local claimed = {}
for b = 1, buckets do
  for i = 1, #ids, CHUNK do
    local last = math.min(i + CHUNK - 1, #ids)
    for j, position in ipairs(redis.call("HMGET", KEYS[b], unpack(ids, i, last))) do
      local id = ids[i + j - 1]
      if position and not claimed[id] then claimed[id] = position end
    end
  end
end
local duplicates, fields, new = {}, {}, 0
for _, pair in ipairs(p.ids) do
  local id, position = pair[1], pair[2]
  local was = claimed[id]
  if not was then
    fields[#fields + 1] = id
    fields[#fields + 1] = position
    claimed[id] = position  -- an id twice in one call: the first is claimed, the second is a duplicate
    new = new + 1
  elseif position == "" or was ~= position then
    duplicates[#duplicates + 1] = id
  end
end
if new > 0 then
  -- one HSET per chunk, not per id (CHUNK is even: id and position stay together)
  chunks(fields, function(...) redis.call("HSET", KEYS[1], ...) end)
  redis.call("EXPIRE", KEYS[1], p.ttl)
end
redis.call("HINCRBY", KEYS[#KEYS], "events_applied", new)
if #duplicates > 0 then redis.call("HINCRBY", KEYS[#KEYS], "events_duplicate", #duplicates) end
return duplicates
