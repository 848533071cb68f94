-- Release the claims of events no shard applied (the writer failed before any apply call), so
-- that a re-driven copy of them is claimed anew instead of being taken for a duplicate.
-- KEYS: one shard's dedupe buckets, newest first, then its counters.
-- ARGV[1]: JSON {ids = {{event id, position}, ...}}: only an id still claimed at that position is released.
local p = cjson.decode(ARGV[1])
local released = 0
for _, pair in ipairs(p.ids) do
  for b = 1, #KEYS - 1 do
    if redis.call("HGET", KEYS[b], pair[1]) == pair[2] then
      redis.call("HDEL", KEYS[b], pair[1])
      released = released + 1
      break
    end
  end
end
if released > 0 then redis.call("HINCRBY", KEYS[#KEYS], "events_applied", -released) end
return released
