-- Learn a batch of query events into the suggestion index, atomically and idempotently.
-- KEYS[1] is the shard's base name (``rv:{7}:sugg``): every key the script touches starts with it, so
-- all share its hash tag and slot (one shard: the queries that start with the same character).
-- ARGV[1] is a JSON payload (see suggestions/store.py: SuggestionStore.payload):
--   lambda_long, lambda_short (per ms), min_support, per_prefix, max_queries,
--   max_user_queries, max_categories, ttl_s, search_memory_s,
--   seen_keys (sets of applied event ids, one per time bucket, newest first), seen_ttl_s,
--   records: {event_id, ts, is_search, session, weight, query, scopes, user, prefixes, category, text}
-- (text: the query as typed, shown to users; query: its normalised form, the index key)
-- A record whose event id is in a seen bucket is skipped whole: a redelivered batch changes nothing.
-- A search counts once per (session, query): one session cannot hammer a query up.
-- Decayed sums use forward decay against a per-key landmark (the prelude's `landmark`),
-- so every update is a pure increment.
local p = cjson.decode(ARGV[1])
local base = KEYS[1]
local EPSILON = 1e-9  -- exp(x) * exp(-x) is not exactly 1
local touched = {}
local applied, duplicates, latest_ts = 0, 0, 0

-- Add value to member of a decayed sorted set; return the member's decayed total at ts.
local function add(key, member, value, ts, lambda, cap)
  local l = landmark(key, ts, lambda)
  local total = redis.call("ZINCRBY", key, value * math.exp(lambda * (ts - l)), member)
  touched[key] = cap
  return tonumber(total) * math.exp(-lambda * (ts - l))
end

local function support(query, ts)
  local key = base .. ":sup"
  local s = tonumber(redis.call("ZSCORE", key, query))
  if not s then return 0 end
  return s * math.exp(-p.lambda_long * (ts - landmark(key, ts, p.lambda_long)))
end

local ids = {}
for i, r in ipairs(p.records) do ids[i] = r[1] end
local seen, fresh = seen_ids(p.seen_keys, ids), {}

for _, r in ipairs(p.records) do
  local event_id, ts, is_search, session, weight, query, scopes, user, prefixes, category, text =
    r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]
  if not seen[event_id] then
    seen[event_id] = true
    table.insert(fresh, event_id)
    applied = applied + 1
    if ts > latest_ts then latest_ts = ts end
    local digest = string.sub(redis.sha1hex(query), 1, 16)
    local counts = true
    local sup = 0
    if is_search == 1 then
      counts = redis.call("SET", base .. ":sq:" .. session .. ":" .. digest, 1, "NX",
                          "EX", p.search_memory_s) ~= false
      if counts then
        sup = add(base .. ":sup", query, 1, ts, p.lambda_long, p.max_queries)
      end
    else
      sup = support(query, ts)
    end
    if user ~= "" then
      add(base .. ":u:" .. user, query, weight, ts, p.lambda_long, p.max_user_queries)
    end
    if counts and sup >= p.min_support - EPSILON then
      for _, scope in ipairs(scopes) do
        for _, prefix in ipairs(prefixes) do
          add(base .. ":px:" .. scope[1] .. ":" .. prefix, query, weight, ts, p.lambda_long, p.per_prefix)
          if scope[2] == 1 then
            add(base .. ":pxs:" .. scope[1] .. ":" .. prefix, query, weight, ts, p.lambda_short, p.per_prefix)
          end
        end
      end
      if text ~= "" then
        redis.call("SET", base .. ":d:" .. digest, text, "EX", p.ttl_s)
      end
      if category ~= "" then
        local ckey = base .. ":qc:" .. digest
        if redis.call("HEXISTS", ckey, category) == 1 or redis.call("HLEN", ckey) < p.max_categories then
          redis.call("HINCRBYFLOAT", ckey, category, weight)
        end
        redis.call("EXPIRE", ckey, p.ttl_s)
      end
    end
  else
    duplicates = duplicates + 1
  end
end

remember_ids(p.seen_keys[1], fresh, p.seen_ttl_s)
for key, cap in pairs(touched) do
  if redis.call("ZCARD", key) > cap then
    redis.call("ZREMRANGEBYRANK", key, 0, -cap - 1)
  end
  redis.call("EXPIRE", key, p.ttl_s)
  redis.call("EXPIRE", key .. "~L", p.ttl_s)
end
if latest_ts > (tonumber(redis.call("GET", base .. ":clock")) or 0) then
  redis.call("SET", base .. ":clock", latest_ts)
end
return {applied, duplicates}
