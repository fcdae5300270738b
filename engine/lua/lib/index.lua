-- index.lua: a small builder over the index.so protocol (spec/services.md §2.3, the original's
-- bin/lib/index.lua). Commands are collected and sent as ONE batch message by `:commit()`;
-- the reply comes back to a temporary `stage.waitfor` id (removed once answered) and each
-- command's callback gets its part of the reply.
--
--   local INDEX = stage.require("index")
--   local ix = INDEX.New("rank", "weekly")            -- stage id, index name
--   ix:set("alice", 120, { name = "Alice" }, function (d, id) ... end)
--   ix:tier(2):get({ "alice", "bob" }, function (r) ... end)
--   ix:commit()
--
-- Callbacks travel as bytecode (like every stage callback): they see globals, never upvalues.
-- `ix.set = { "alice", 120 }` (assigning a command) sends it at once: see the end.
-- Callback arguments: set -> (rank d, id); delete -> (ok, id); get -> (the reply table
-- { ID = { v, I } }); range / forEach -> ({ [rank] = { i, k, v, d } }); total -> (count).
local INDEX = {}
INDEX.__index = INDEX

-- `callbacks`: a function used for every command without its own callback, or a table of
-- them by command name (`set`, `get`, `delete`, `range`, `forEach`, `total`).
function INDEX.New(stage_id, index_name, callbacks)
  return setmetatable({
    stage = stage_id or "index", name = index_name or "index", callbacks = callbacks or {},
    at = 1, n = 0, batch = {}, calls = {},
  }, INDEX)
end

-- Selects the tier (1..4) for the commands added after it; `""` means all tiers.
function INDEX:tier(t)
  self.at = t
  return self
end

local function add(self, cmd, tier, payload, cb, arg)
  self.n = self.n + 1
  local key = ("#%d.%s?%s/%s"):format(self.n, cmd, self.name, tostring(tier))
  self.batch[key] = payload
  local dflt = self.callbacks
  if type(cb) ~= "function" then cb = type(dflt) == "function" and dflt or dflt[cmd] end
  if cb ~= nil then self.calls[key] = { cb, arg } end
  return self
end

-- score: a score or an array of scores of the current tier; value: the stored user value.
function INDEX:set(key, score, value, cb)
  return add(self, "set", self.at, { [key] = { i = score, v = value } }, cb, key)
end

function INDEX:get(keys, cb)
  return add(self, "get", self.at, keys, cb)
end

-- Removes `key` from every tier.
function INDEX:delete(key, cb)
  return add(self, "del", "", key, cb, key)
end

function INDEX:forEach(start, count, cb)
  return add(self, "forEach", self.at, { start, count }, cb)
end

-- From `delta` ranks above `key` (a string id), or from a score when `count` is nil:
-- range(score, count, cb).
function INDEX:range(key, delta, count, cb)
  if type(count) == "function" or count == nil then
    return add(self, "range", self.at, { key, delta }, count)
  end
  return add(self, "range", self.at, { key, delta, count }, cb)
end

function INDEX:total(cb)
  return add(self, "total", self.at == 1 and "" or self.at, true, cb)
end

-- Runs on the reply: `calls` (stored with the handler) maps batch keys to {callback, arg}.
local function on_reply(calls, result)
  stage.waitfor(_WAITFOR[-1], nil)
  local env = getfenv(1) -- the stage's globals: callbacks stored with the handler run there too
  for key, call in pairs(calls) do
    local r = result and result[key]
    local cb, arg = setfenv(call[1], env), call[2]
    if arg ~= nil and type(r) == "table" and (key:find("%.set%?") or key:find("%.del%?")) then
      cb(r[arg], arg)
    else
      cb(r, arg)
    end
  end
end

-- Sends the collected commands as one batch; callbacks run when the reply arrives.
function INDEX:commit()
  if self.n == 0 then return self end
  local id = stage.waitfor(on_reply, self.calls)
  stage.signal(self.stage .. ":" .. id, self.batch)
  self.n, self.batch, self.calls = 0, {}, {}
  return self
end

-- The original's assign-to-send form: `ix.set = { key, score, value, cb }` (and `get`,
-- `delete`, `range`, `forEach`, `total` with their arguments in a table, or one plain
-- argument) adds the command and commits at once, with anything already collected.
local SENDS = { set = true, get = true, delete = true, range = true, forEach = true, total = true }
function INDEX.__newindex(self, k, v)
  if not SENDS[k] then
    error("index builder: `" .. tostring(k) .. "` cannot be assigned (assigning set, get, delete, range, forEach or total sends it)", 2)
  end
  if type(v) == "table" then
    INDEX[k](self, unpack(v, 1, table.maxn(v)))
  else
    INDEX[k](self, v)
  end
  self:commit()
end

return INDEX
