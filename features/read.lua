-- Read one entity's features in one call (an entity's keys share a slot): a request's reads are
-- then a few script calls, not a command per key, each with its own parse and reply.
-- KEYS: the keys read. ARGV[i]: how KEYS[i] is read:
--   "s<n>": its n highest members with scores, "m": every member, "h": every field, "g": the value.
-- Returns one reply per key (flat member, score lists as ZREVRANGE gives them; nil for a missing value).
local out = {}
for i, key in ipairs(KEYS) do
  local op = ARGV[i]
  if op == "g" then
    out[i] = redis.call("GET", key)
  elseif op == "m" then
    out[i] = redis.call("ZREVRANGE", key, 0, -1)
  elseif op == "h" then
    out[i] = redis.call("HGETALL", key)
  else
    out[i] = redis.call("ZREVRANGE", key, 0, tonumber(string.sub(op, 2)) - 1, "WITHSCORES")
  end
end
return out
