-- The prelude of every Relevo Redis script (core/lua.py puts it in front of each):
-- forward decay against a per-key landmark, and event ids remembered in sets of
-- time buckets, so a redelivered event is recognised within the dedupe window.
local REBASE = 200  -- rebase a landmark before exp() leaves double range
local CHUNK = 1000  -- unpack() of a long table overflows Lua's C stack
local landmarks = {}  -- per call: each key's landmark is read once

local function chunks(list, fn)
  for i = 1, #list, CHUNK do
    fn(unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

-- The landmark (epoch ms) of the decayed sorted set `key` for an update at `t`, with
-- `lambda` per ms: a member's stored score s means s * exp(-lambda * (now - landmark)).
-- Set on first use; rebased (members rescaled) once t has moved far beyond it.
local function landmark(key, t, lambda)
  local lkey = key .. "~L"
  local l = landmarks[key] or tonumber(redis.call("GET", lkey))
  if not l then
    redis.call("SET", lkey, t)
    l = t
  elseif lambda * (t - l) > REBASE then
    local f = math.exp(-lambda * (t - l))
    local members = redis.call("ZRANGE", key, 0, -1, "WITHSCORES")
    for i = 1, #members, 2 do
      redis.call("ZADD", key, tonumber(members[i + 1]) * f, members[i])
    end
    redis.call("SET", lkey, t)
    l = t
  end
  landmarks[key] = l
  return l
end

-- What one stored unit of the decayed sorted set `key` is worth at `now` (0 without a landmark).
local function worth(key, lambda, now)
  local l = landmarks[key] or tonumber(redis.call("GET", key .. "~L"))
  if not l then return 0 end
  return math.exp(-lambda * (now - l))
end

-- The ids among `ids` that one of the `buckets` (sets of applied event ids) holds, as a set.
local function seen_ids(buckets, ids)
  local seen = {}
  for _, bucket in ipairs(buckets) do
    for i = 1, #ids, CHUNK do
      local last = math.min(i + CHUNK - 1, #ids)
      for j, flag in ipairs(redis.call("SMISMEMBER", bucket, unpack(ids, i, last))) do
        if flag == 1 then seen[ids[i + j - 1]] = true end
      end
    end
  end
  return seen
end

-- Remember `ids` as applied in the newest bucket, which lives `ttl` seconds.
local function remember_ids(bucket, ids, ttl)
  if #ids == 0 then return end
  chunks(ids, function(...) redis.call("SADD", bucket, ...) end)
  redis.call("EXPIRE", bucket, ttl)
end
