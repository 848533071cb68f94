-- Apply a batch of feature updates atomically and idempotently.
-- ARGV[1] is a JSON payload:
--   defs:   per feature index {aggregation, half_life_s, ttl_s, max_members}
--   events: {event_id, ts, {{feature index, key, member, value}, ...}}
--   seen_prefix, window_s, clock_key, stats_key
-- An event whose id was seen within the window is skipped whole, so a redelivered
-- batch changes nothing. Decayed sums use forward decay against a per-key landmark
-- (key .. "~L"), so every update is a pure increment and order does not matter.
local p = cjson.decode(ARGV[1])
local defs = p.defs
local touched = {}
local applied, duplicates, latest_ts = 0, 0, 0
local LN2 = math.log(2)
local REBASE = 200  -- rebase a landmark before exp() leaves double range

local function landmark(key, ts, lambda)
  local lkey = key .. "~L"
  local l = tonumber(redis.call("GET", lkey))
  if not l then
    redis.call("SET", lkey, ts)
    return ts
  end
  local x = lambda * (ts - l) / 1000
  if x > REBASE then
    local f = math.exp(-x)
    local members = redis.call("ZRANGE", key, 0, -1, "WITHSCORES")
    for i = 1, #members, 2 do
      redis.call("ZADD", key, tonumber(members[i + 1]) * f, members[i])
    end
    redis.call("SET", lkey, ts)
    return ts
  end
  return l
end

for _, ev in ipairs(p.events) do
  local id, ts, ups = ev[1], ev[2], ev[3]
  if redis.call("SET", p.seen_prefix .. id, 1, "NX", "EX", p.window_s) then
    applied = applied + 1
    if ts > latest_ts then latest_ts = ts end
    for _, u in ipairs(ups) do
      local d = defs[u[1]]
      local agg, key, member, value = d[1], u[2], u[3], u[4]
      if agg == "decayed" then
        local lambda = LN2 / d[2]
        local l = landmark(key, ts, lambda)
        redis.call("ZINCRBY", key, value * math.exp(lambda * (ts - l) / 1000), member)
      elseif agg == "latest" then
        redis.call("ZADD", key, "GT", value, member)
      else
        redis.call("HINCRBYFLOAT", key, member, value)
      end
      touched[key] = d
    end
  else
    duplicates = duplicates + 1
  end
end

for key, d in pairs(touched) do
  local cap = d[4]
  if cap and cap > 0 and redis.call("ZCARD", key) > cap then
    redis.call("ZREMRANGEBYRANK", key, 0, -cap - 1)
  end
  redis.call("EXPIRE", key, d[3])
  if d[1] == "decayed" then redis.call("EXPIRE", key .. "~L", d[3]) end
end

if latest_ts > (tonumber(redis.call("GET", p.clock_key)) or 0) then
  redis.call("SET", p.clock_key, latest_ts)
end
redis.call("HINCRBY", p.stats_key, "events_applied", applied)
redis.call("HINCRBY", p.stats_key, "events_duplicate", duplicates)
return {applied, duplicates}
