
-- Runtime (the same in every generated module). A checker returns nothing when the value is
-- valid; otherwise a reason and, inside tables, the path below the value ("x", "[2].name").
-- Paths count array elements from 1, as Lua and the wire's "#n" keys do.
local type, pairs, tostring, error, floor = type, pairs, tostring, error, math.floor
local byte, sub = string.byte, string.sub
local S, K, E, A = {}, {}, {}, {} -- struct checkers, known fields, enum sets, element checkers
M.enums = {}

-- `name` followed by the path `p` found below it.
local function at(name, p)
  if p == nil then return name end
  if byte(p, 1) == 91 then return name .. p end -- "[": an array element
  return name .. "." .. p
end

-- A client-chosen key or name, cut short before it is echoed back in an error.
local function short(k)
  k = tostring(k)
  if #k > 64 then return sub(k, 1, 64) .. "..." end
  return k
end

local function c_bool(v)
  if type(v) ~= "boolean" then return "expected boolean" end
end

-- Integers are doubles in LuaJIT: an integer is a number equal to its floor (NaN never is).
local function c_int(v, lo, hi)
  if type(v) ~= "number" then return "expected integer" end
  if v ~= floor(v) then return "not an integer" end
  if v < lo then return "below minimum " .. lo end
  if v > hi then return "above maximum " .. hi end
end

local function c_float(v, lo, hi)
  if type(v) ~= "number" then return "expected number" end
  if v ~= v or v == 1 / 0 or v == -1 / 0 then return "not finite" end
  if v < lo then return "below minimum " .. lo end
  if v > hi then return "above maximum " .. hi end
end

-- Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
local function utf8_ok(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    elseif c >= 0xC2 and c <= 0xDF then
      local c2 = byte(s, i + 1)
      if not c2 or c2 < 0x80 or c2 > 0xBF then return false end
      i = i + 2
    elseif c >= 0xE0 and c <= 0xEF then
      local c2, c3 = byte(s, i + 1, i + 2)
      if not c3 or c3 < 0x80 or c3 > 0xBF then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
      if c2 < lo or c2 > hi then return false end
      i = i + 3
    elseif c >= 0xF0 and c <= 0xF4 then
      local c2, c3, c4 = byte(s, i + 1, i + 3)
      if not c4 or c3 < 0x80 or c3 > 0xBF or c4 < 0x80 or c4 > 0xBF then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      if c2 < lo or c2 > hi then return false end
      i = i + 4
    else
      return false
    end
  end
  return true
end

-- Lengths count bytes, as the wire does.
local function c_bytes(v, lo, hi)
  if type(v) ~= "string" then return "expected string" end
  local n = #v
  if n < lo then return "shorter than " .. lo .. " bytes" end
  if n > hi then return "longer than " .. hi .. " bytes" end
end

local function c_string(v, lo, hi)
  local r = c_bytes(v, lo, hi)
  if r then return r end
  -- Pure ASCII (the common case) needs no decoding pass. A byte loop finds the first
  -- non-ASCII byte: LuaJIT compiles it, where a pattern search (string.find) would run
  -- interpreted at about 15 ns a byte (BENCHMARKS.md "Packet schemas").
  for i = 1, #v do
    if byte(v, i) > 127 then
      if not utf8_ok(v) then return "invalid UTF-8" end
      return
    end
  end
end

local function c_enum(v, set)
  if type(v) ~= "string" then return "expected string" end
  if set[v] ~= true then return "unknown enum value" end
end

-- An array is a table whose keys are exactly 1..n. The count is bounded while counting, so a
-- huge table costs at most `hi` steps before it is refused.
local function c_array(v, lo, hi, elem, mode)
  if type(v) ~= "table" then return "expected array" end
  local n = 0
  for k in pairs(v) do
    if type(k) ~= "number" then return "not an array" end
    n = n + 1
    if n > hi then return "more than " .. hi .. " elements" end
  end
  if n < lo then return "fewer than " .. lo .. " elements" end
  for i = 1, n do
    local e = v[i]
    if e == nil then return "not an array" end -- a hole or a key outside 1..n
    local r, p = elem(e, mode)
    if r then return r, at("[" .. i .. "]", p) end
  end
end

-- Fields the schema does not name, per `mode` ("drop" or "reject"; "keep" never gets here).
local function unknown(t, known, mode)
  for k in pairs(t) do
    if known[k] ~= true then
      if mode == "reject" then return "unknown field", short(k) end
      t[k] = nil -- clearing a field during traversal is allowed
    end
  end
end

-- The table a message name maps to: its metadata and its decode/new functions.
local function message(name, from, reply, check)
  local m = { name = name, from = from, reply = reply }
  -- Checks `t` in place (defaults filled). Returns t, or nil and {message, field, reason}.
  function m.decode(t)
    local r, p = check(t, M.unknown_fields)
    if r then return nil, { message = name, field = p or "", reason = r } end
    return t
  end
  -- Builds an outgoing message: sets t.message, fills defaults and checks strictly (an
  -- unknown field is a typo here). A bad field is the caller's bug, so it raises.
  function m.new(t)
    t = t or {}
    t.message = name
    local r, p = check(t, "reject")
    if r then error(name .. "." .. (p or "") .. ": " .. r, 2) end
    return t
  end
  return m
end

-- Checks any message by its `message` field: t, or nil and {message, field, reason}.
function M.decode(t)
  if type(t) ~= "table" then return nil, { field = "", reason = "expected table" } end
  local name = t.message
  if name == nil then return nil, { field = "message", reason = "missing" } end
  if type(name) ~= "string" then return nil, { field = "message", reason = "expected string" } end
  local m = M.messages[name]
  if m == nil then return nil, { message = short(name), field = "message", reason = "unknown message" } end
  return m.decode(t)
end

-- The bad_packet answer for a decode error `err`.
function M.bad_packet(err)
  return { message = "error", code = "bad_packet", ["for"] = err.message, field = err.field, reason = err.reason }
end

-- A handler's return value: a table naming a server message (or, with no `message`, the
-- request's reply) is completed and checked with that message's `new`; anything else
-- passes through untouched.
local function reply(m, v)
  if type(v) ~= "table" then return v end
  local name = v.message
  if name == nil then name = m.reply end
  local r = name ~= nil and M.messages[name]
  if r and r.from == "server" then return r.new(v) end
  return v
end

-- The seed's receive idiom with the schema in front: a packet that fails its schema never
-- reaches a handler; the client gets bad_packet (and, with on_bad_packet = "close", loses
-- the connection). A valid one runs stage.load((prefix or "packet+") .. data.message, ...)'s
-- handler as f(socket, data) and commits what it returns. Returns the handler's value, or
-- nil and the decode error.
function M.receive(socket, data, addr, prefix)
  -- A server message from a client is refused for its direction before any field is looked at.
  local named = type(data) == "table" and type(data.message) == "string" and M.messages[data.message]
  local ok, err
  if named and named.from ~= "client" then
    ok, err = nil, { message = data.message, field = "message", reason = "not a client message" }
  else
    ok, err = M.decode(data)
  end
  if not ok then
    socket.commit(M.bad_packet(err), addr)
    if M.on_bad_packet == "close" then socket.close() end
    return nil, err
  end
  local m = M.messages[data.message]
  return stage.load((prefix or "packet+") .. m.name, function (f)
    if f == nil then error("no handler for message " .. m.name, 0) end
    local v = reply(m, f(socket, data))
    if v ~= nil then socket.commit(v, addr) end
    return v
  end)
end
