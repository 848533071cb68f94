-- Apply one shard's aggregated feature updates, atomically and exactly once per read position.
-- KEYS[1]: the shard's applied positions (hash: source -> "offset.index" of the last event applied)
-- KEYS[2]: the latest event time applied in the shard (the read clock when no stream clock exists)
-- KEYS[3..]: every key the groups touch; a decayed feature's key is followed by its landmark key.
-- ARGV[1]: JSON {positions = {source = {first offset, first index, last offset, last index}},
--                t_ref, defs = {{aggregation, lambda per ms, ttl, cap}},
--                groups = {{feature index, key index into KEYS, {member, value, ...}}}}
-- If any position was applied before (a batch read again after a crash), nothing is written and
-- the applied positions are returned, so the writer can re-aggregate without those events.
-- Decayed sums use forward decay against a per-key landmark (the prelude's `landmark`).
local p = cjson.decode(ARGV[1])

local applied, overlap = {}, false
for source, r in pairs(p.positions) do
  local last = redis.call("HGET", KEYS[1], source)
  if last then
    applied[source] = last
    local offset, index = string.match(last, "^(%-?%d+)%.(%d+)$")
    offset, index = tonumber(offset), tonumber(index)
    if offset > r[1] or (offset == r[1] and index >= r[2]) then overlap = true end
  end
end
if overlap then return {"overlap", cjson.encode(applied)} end

local t_ref = p.t_ref
for _, g in ipairs(p.groups) do
  local d, key, flat = p.defs[g[1]], KEYS[g[2]], g[3]
  local agg, ttl, cap = d[1], d[3], d[4]
  if agg == "decayed" then
    local lambda = d[2]
    local f = math.exp(lambda * (t_ref - landmark(key, t_ref, lambda)))
    for i = 1, #flat, 2 do
      redis.call("ZINCRBY", key, flat[i + 1] * f, flat[i])
    end
    redis.call("EXPIRE", key .. "~L", ttl)
  elseif agg == "latest" then
    local args = {}
    for i = 1, #flat, 2 do
      args[#args + 1] = flat[i + 1]
      args[#args + 1] = flat[i]
    end
    chunks(args, function(...) redis.call("ZADD", key, "GT", ...) end)
  else
    for i = 1, #flat, 2 do
      redis.call("HINCRBY", key, flat[i], flat[i + 1])
    end
  end
  if cap > 0 and redis.call("ZCARD", key) > cap then
    redis.call("ZREMRANGEBYRANK", key, 0, -cap - 1)
  end
  redis.call("EXPIRE", key, ttl)
end

for source, r in pairs(p.positions) do
  redis.call("HSET", KEYS[1], source, string.format("%d.%d", r[3], r[4]))
end
if t_ref > (tonumber(redis.call("GET", KEYS[2])) or 0) then
  redis.call("SET", KEYS[2], t_ref)
end
return {"applied"}
