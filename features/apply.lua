-- Apply one aggregated batch of feature updates, atomically and exactly once.
-- ARGV[1] is a JSON payload (features/batch.py, features/writer.py):
--   ids           event ids of the batch (already unique)
--   seen_keys     the dedupe buckets covering the window, newest first
--   window_s      how long the newest bucket lives
--   t_ref, defs, groups   the aggregated updates: {feature index, key, {member, value, ...}};
--                 defs are {aggregation, lambda per ms, ttl, cap}
--   clock_key, stats_key
-- If any id was applied before (a redelivery), nothing is written and the seen ids
-- are returned, so the caller can re-aggregate without them. Decayed sums use
-- forward decay against a per-key landmark (the prelude's `landmark`): pure increments.
local p = cjson.decode(ARGV[1])

local found = seen_ids(p.seen_keys, p.ids)
local seen = {}
for id in pairs(found) do seen[#seen + 1] = id end
if #seen > 0 then return {"seen", seen} end
remember_ids(p.seen_keys[1], p.ids, p.window_s)

local t_ref = p.t_ref
for _, g in ipairs(p.groups) do
  local d, key, flat = p.defs[g[1]], g[2], g[3]
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

if t_ref > (tonumber(redis.call("GET", p.clock_key)) or 0) then
  redis.call("SET", p.clock_key, t_ref)
end
redis.call("HINCRBY", p.stats_key, "events_applied", #p.ids)
return {"applied", #p.ids}
