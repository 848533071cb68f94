-- Apply one aggregated batch of feature updates, atomically and exactly once.
-- ARGV[1] is a JSON payload (features/batch.py, features/store.py):
--   ids           event ids of the batch (already unique)
--   seen_keys     the dedupe buckets covering the window, newest first
--   window_s      how long the newest bucket lives
--   t_ref, defs, groups   the aggregated updates: {feature index, key, {member, value, ...}}
--   clock_key, stats_key
-- If any id was applied before (a redelivery), nothing is written and the seen ids
-- are returned, so the caller can re-aggregate without them. Decayed sums use
-- forward decay against a per-key landmark (key .. "~L"): pure increments.
local p = cjson.decode(ARGV[1])
local CHUNK = 1000  -- unpack() of a long table overflows Lua's C stack
local LN2 = math.log(2)
local REBASE = 200  -- rebase a landmark before exp() leaves double range

local function chunks(list, fn)
  for i = 1, #list, CHUNK do
    fn(unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

local seen = {}
for _, bucket in ipairs(p.seen_keys) do
  for i = 1, #p.ids, CHUNK do
    local last = math.min(i + CHUNK - 1, #p.ids)
    local flags = redis.call("SMISMEMBER", bucket, unpack(p.ids, i, last))
    for j, flag in ipairs(flags) do
      if flag == 1 then seen[#seen + 1] = p.ids[i + j - 1] end
    end
  end
end
if #seen > 0 then return {"seen", seen} end

local current = p.seen_keys[1]
chunks(p.ids, function(...) redis.call("SADD", current, ...) end)
redis.call("EXPIRE", current, p.window_s)

local function landmark(key, t, lambda)
  local lkey = key .. "~L"
  local l = tonumber(redis.call("GET", lkey))
  if l and lambda * (t - l) / 1000 <= REBASE then return l end
  if l then
    local f = math.exp(-lambda * (t - l) / 1000)
    local members = redis.call("ZRANGE", key, 0, -1, "WITHSCORES")
    for i = 1, #members, 2 do
      redis.call("ZADD", key, tonumber(members[i + 1]) * f, members[i])
    end
  end
  redis.call("SET", lkey, t)
  return t
end

local t_ref = p.t_ref
for _, g in ipairs(p.groups) do
  local d, key, flat = p.defs[g[1]], g[2], g[3]
  local agg, ttl, cap = d[1], d[3], d[4]
  if agg == "decayed" then
    local lambda = LN2 / d[2]
    local f = math.exp(lambda * (t_ref - landmark(key, t_ref, lambda)) / 1000)
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
