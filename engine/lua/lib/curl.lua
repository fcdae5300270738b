-- curl.lua: a small builder over the curl.so protocol (spec/services.md §5.4, the original's
-- bin/lib/curl.lua). `:commit()` sends one request to the curl.so stage and calls `callback`
-- with the reply table when it comes back (through a one-shot `stage.waitfor` id, removed
-- once answered).
--
--   local CURL = stage.require("curl")
--   CURL.New("agent", "http://127.0.0.1:8080/score", function (r) logger.info(r.status) end)
--     :setHeader("X-Game", "lobby")
--     :setPostField("user", "bob")
--     :extra({ id = 7 })
--     :commit()
--
-- The callback travels as bytecode (like every stage callback): it sees globals, never
-- upvalues. Without a callback the request is sent and nobody is answered.
local CURL = {}
CURL.__index = CURL

function CURL.New(stage_id, url, callback)
  return setmetatable({ stage = stage_id or "curl", req = { url = url }, callback = callback }, CURL)
end

-- Replaces every extra header line: { Name = "value" }.
function CURL:header(t)
  self.req.header = t
  return self
end

function CURL:setHeader(k, v)
  self.req.header = self.req.header or {}
  self.req.header[k] = v
  return self
end

-- The body: a string is sent as-is, a table is form-encoded. Either makes it a POST.
function CURL:post(v)
  self.req.data = v
  return self
end

function CURL:setPostField(k, v)
  if type(self.req.data) ~= "table" then self.req.data = {} end
  self.req.data[k] = v
  return self
end

-- Any value, given back unchanged as the reply's `extra`.
function CURL:extra(v)
  self.req.extra = v
  return self
end

local function on_reply(callback, reply)
  stage.waitfor(_WAITFOR[-1], nil)
  setfenv(callback, getfenv(1)) -- the stage's globals
  return callback(reply)
end

function CURL:commit()
  if self.callback == nil then
    stage.signal(self.stage .. ":=", self.req)
    return self
  end
  local id = stage.waitfor(on_reply, self.callback)
  stage.signal(self.stage .. ":" .. id, self.req)
  return self
end

return CURL
