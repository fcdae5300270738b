-- lotus client for STAGE scripts (spec/lotus.md §4, §9.7): `local lotus = require("lotus")`,
-- then the seed's calls as written. It speaks the original lotus wire (2-byte big-endian length
-- + JSON, the bare login line) over a `broker.join` socket, so it talks to a lotus.so stage's
-- `compat` address on this node or any other.
--
-- Nothing here blocks a core: `connect`/`login` start the connection and every call made
-- before it is up is queued and sent, in order, once the login line says 200. Calls that want
-- an answer (`lotus.call`, `lotus.get`, `channel.history`) take a callback. Subscriptions
-- remember the last message id per channel; after a reconnect (automatic, with a growing
-- delay) each channel resumes from the next id, so a subscriber sees no gap.
--
-- Socket callbacks are re-created from bytecode and see no upvalues: they reach this module's
-- state through `require("lotus")`, which is the same table on the core that owns the socket.

local lotus = { _s = { queue = {}, buf = "", rid = 0, waiting = {}, channels = {}, backoff = 100 } }

local function S() return lotus._s end

local function encode(name, params)
  local body = bundle.json({ name = name, params = params })
  local n = #body
  if n > 65535 then error("lotus: a command of " .. n .. " bytes exceeds the compat wire's 65535", 3) end
  return string.char(math.floor(n / 256), n % 256) .. body
end

local function send(name, params)
  local s = S()
  local frame = encode(name, params)
  if s.ready and s.sock then
    s.sock.commit(frame)
  else
    s.queue[#s.queue + 1] = frame
  end
end

local function request(name, params, cb)
  local s = S()
  s.rid = s.rid + 1
  params.rid = s.rid
  -- `sent`: on the wire (a lost connection fails it); otherwise queued for the next one.
  s.waiting[s.rid] = { cb = cb, sent = s.ready and s.sock ~= nil }
  send(name, params)
end

local function open()
  local s = S()
  if not (s.host and s.account) or s.sock then return end
  s.ready, s.buf = false, ""
  -- The login frame goes first, ahead of everything queued.
  local sock = broker.join("tcp://" .. s.host .. ":" .. s.port, function (sock)
    sock.commit(require("lotus")._login_frame())
  end, 3000)
  if type(sock) ~= "table" then
    logger.warn("lotus: cannot connect to " .. s.host .. ":" .. s.port .. " (errno " .. tostring(sock) .. ")")
    return
  end
  s.sock = sock
  sock.receive = function (so, data) require("lotus")._receive(so, data) end
  sock.close = function (so, errno) require("lotus")._closed(so, errno) end
end

function lotus._login_frame()
  local s = S()
  local body = bundle.json({ account = s.account, password = s.password, name = s.node })
  return string.char(math.floor(#body / 256), #body % 256) .. body
end

function lotus._ready()
  local s = S()
  s.ready, s.backoff = true, 100
  -- Resume every subscription from the message after the last one seen.
  for name, ch in pairs(s.channels) do
    if ch.cb then
      local params = { channel = name }
      if ch.last then params.from = { id = ch.last + 1 } end
      s.sock.commit(encode("subscribe", params))
    end
  end
  local queue = s.queue
  s.queue = {}
  for i = 1, #queue do s.sock.commit(queue[i]) end
  for _, w in pairs(s.waiting) do w.sent = true end
end

function lotus._frame(msg)
  local s = S()
  local t = msg.type
  if t == "channel_message" then
    local ch = s.channels[msg.channel]
    if ch then
      if ch.epoch ~= msg.epoch then ch.epoch, ch.last = msg.epoch, nil end
      if ch.last == nil or msg.id > ch.last then
        ch.last = msg.id
        if ch.cb then ch.cb(unpack(msg.msg or {})) end
      end
    else
      print("lotus: message for channel " .. tostring(msg.channel) .. " with no subscriber")
    end
  elseif t == "channel_truncated" or t == "channel_deleted" then
    local ch = s.channels[msg.channel]
    if ch and ch.on_event then ch.on_event(t, msg) end
    if t == "channel_deleted" and ch then ch.cb, ch.last = nil, nil end
  elseif msg.rid ~= nil then
    local w = s.waiting[msg.rid]
    s.waiting[msg.rid] = nil
    local cb = w and w.cb
    if cb then
      if t == "error" then
        cb(nil, msg.code, msg.detail)
      elseif t == "channel_history" then
        cb(msg)
      else
        cb(msg.result)
      end
    end
  else
    logger.warn("lotus: unexpected frame of type " .. tostring(t))
  end
end

function lotus._receive(sock, data)
  local s = S()
  s.buf = s.buf .. data
  if not s.ready then
    local nl = s.buf:find("\n", 1, true)
    if not nl then return end
    local line = s.buf:sub(1, nl - 1)
    s.buf = s.buf:sub(nl + 1)
    if line:sub(1, 3) ~= "200" then
      logger.error("lotus: login refused: " .. line)
      s.refused = true
      sock.close()
      return
    end
    lotus._ready()
  end
  while #s.buf >= 2 do
    local n = s.buf:byte(1) * 256 + s.buf:byte(2)
    if #s.buf < 2 + n then break end
    local body = s.buf:sub(3, 2 + n)
    s.buf = s.buf:sub(3 + n)
    local ok, msg = pcall(bundle.json, body)
    if ok and type(msg) == "table" then
      local ok2, err = pcall(lotus._frame, msg)
      if not ok2 then logger.warn("lotus: " .. tostring(err)) end
    else
      logger.warn("lotus: bad frame: " .. tostring(msg))
    end
  end
end

function lotus._closed(sock, errno)
  local s = S()
  s.sock, s.ready = nil, false
  -- Requests on the lost connection will not be answered: tell their callbacks (queued
  -- ones go out on the next connection).
  for rid, w in pairs(s.waiting) do
    if w.sent then
      s.waiting[rid] = nil
      if w.cb then pcall(w.cb, nil, "disconnected") end
    end
  end
  if s.refused or s.stopped then return end
  local delay = s.backoff
  s.backoff = math.min(delay * 2, 5000)
  stage.addtask(delay, function () require("lotus")._reopen() end)
end

function lotus._reopen()
  open()
end

--- The seed's API -------------------------------------------------------------------------

-- lotus.connect(host, port) or lotus.connect{host = ..., port = ..., account = ..., password = ..., node = ...}
function lotus.connect(host, port)
  local s = S()
  if type(host) == "table" then
    local c = host
    s.host, s.port = c.host, c.port
    if c.account then return lotus.login(c.account, c.password, c.node or c.name) end
    return
  end
  s.host, s.port = host, port
end

-- lotus.login(account, password, node): logs in (as soon as the connection is up).
function lotus.login(account, password, node)
  local s = S()
  s.account, s.password, s.node = account, password, node
  s.refused, s.stopped = false, false
  lotus._reopen()
end

function lotus.close()
  local s = S()
  s.stopped = true
  if s.sock then s.sock.close() end
end

function lotus.register(schema)
  assert(type(schema) == "table" and schema.typename, "lotus.register: a schema needs a typename")
  send("register", { schema = schema })
end

-- A proxy for a state: `s.fn(...)` runs handler `fn` remotely (no return value).
function lotus.state(statename)
  return setmetatable({ name = statename }, {
    __index = function (_, fn)
      return function (...)
        send("execute_state", { statename = statename, funcname = fn, params = { ... } })
      end
    end,
  })
end

function lotus.init(typename, statename, value)
  send("init_state", { typename = typename, statename = statename, value = value })
  return lotus.state(statename)
end

-- lotus.update(statename, k1, ..., kn, v): path assignment (an empty path replaces the state).
function lotus.update(statename, ...)
  local n = select("#", ...)
  assert(n >= 1, "lotus.update(statename, k1, ..., v) needs a value")
  local args = { ... }
  local keys = {}
  for i = 1, n - 1 do keys[i] = args[i] end
  send("update_state", { statename = statename, keys = keys, value = args[n] })
  return lotus.state(statename)
end

-- lotus.call(statename, fn, {args...}, cb): runs a handler; cb(results, err_code, detail).
function lotus.call(statename, fn, args, cb)
  request("call", { statename = statename, funcname = fn, params = args or {} }, cb)
end

-- lotus.get(statename, {k1, ...}, cb): reads a state (or a path in it); cb(value, err_code).
function lotus.get(statename, keys, cb)
  request("get", { statename = statename, keys = keys or {} }, cb)
end

-- lotus.channel(name): subscribe(cb [, {from = id, on_event = fn}]), unsubscribe(),
-- publish(msg), delete(), history({last = n} | {from = {id = k}}, cb).
function lotus.channel(name)
  local s = S()
  local ch = s.channels[name]
  if ch then return ch.api end
  ch = {}
  s.channels[name] = ch
  ch.api = {
    subscribe = function (cb, opts)
      ch.cb = cb
      ch.on_event = opts and opts.on_event
      local params = { channel = name }
      local from = opts and opts.from
      if from then
        ch.last = from - 1
        params.from = { id = from }
      end
      send("subscribe", params)
    end,
    unsubscribe = function ()
      ch.cb = nil
      send("unsubscribe", { channel = name })
    end,
    publish = function (msg) send("publish", { channel = name, msg = msg }) end,
    delete = function () send("delete_channel", { channel = name }) end,
    history = function (query, cb)
      local params = { channel = name, last = query.last, from = query.from, limit = query.limit }
      request("channel_history", params, cb)
    end,
  }
  return ch.api
end

return lotus
