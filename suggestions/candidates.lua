-- Read the candidates for one prefix with every signal the ranker needs, in one round trip.
-- KEYS[1] is the shard's base name: every key read starts with it (one hash tag, one slot).
-- ARGV[1] is a JSON payload (see suggestions/store.py: SuggestionStore.candidates):
--   lambda_long, lambda_short (per ms), scopes ({key part, has short index}, e.g. {"r:FR", 1}),
--   prefix_key (safe id of the prefix), prefix (normalised text), user (safe id or ""),
--   n (candidates per source), categories (true to return each candidate's category counts)
-- Returns JSON {clock, rows}: row = {query, text, support, long (and short) per scope, user, categories}.
-- Values are decayed to the stream clock, so they read as counts "now" in event time.
local p = cjson.decode(ARGV[1])
local base = KEYS[1]
local clock = tonumber(redis.call("GET", base .. ":clock"))
if not clock then return cjson.encode({clock = 0, rows = {}}) end

local sources = {}  -- {key, decay factor} per sorted set a signal is read from
local function source(key, lambda)
  local s = {key, worth(key, lambda, clock)}
  table.insert(sources, s)
  return s
end

local seen, order = {}, {}
local function candidate(query)
  if not seen[query] then
    seen[query] = true
    table.insert(order, query)
  end
end

local support = source(base .. ":sup", p.lambda_long)
local scoped = {}
for _, scope in ipairs(p.scopes) do
  local kinds = {{":px:", p.lambda_long}}
  if scope[2] == 1 then table.insert(kinds, {":pxs:", p.lambda_short}) end
  for _, kind in ipairs(kinds) do
    local s = source(base .. kind[1] .. scope[1] .. ":" .. p.prefix_key, kind[2])
    table.insert(scoped, s)
    for _, q in ipairs(redis.call("ZREVRANGE", s[1], 0, p.n - 1)) do candidate(q) end
  end
end
local user = nil
if p.user ~= "" then
  user = source(base .. ":u:" .. p.user, p.lambda_long)
  for _, q in ipairs(redis.call("ZREVRANGE", user[1], 0, -1)) do
    if string.sub(q, 1, #p.prefix) == p.prefix then candidate(q) end
  end
end

local function value(s, query)
  local v = tonumber(redis.call("ZSCORE", s[1], query))
  return v and v * s[2] or 0
end

local rows = {}
for _, q in ipairs(order) do
  local digest = string.sub(redis.sha1hex(q), 1, 16)
  local row = {q, redis.call("GET", base .. ":d:" .. digest) or q, value(support, q)}
  for _, s in ipairs(scoped) do table.insert(row, value(s, q)) end
  table.insert(row, user and value(user, q) or 0)
  local cats = {}
  if p.categories then
    local h = redis.call("HGETALL", base .. ":qc:" .. digest)
    for i = 1, #h, 2 do cats[h[i]] = tonumber(h[i + 1]) end
  end
  table.insert(row, cats)
  table.insert(rows, row)
end
return cjson.encode({clock = clock, rows = rows})
