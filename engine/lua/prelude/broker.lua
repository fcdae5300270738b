-- Prelude, part 2 of 3: `broker` and socket objects (spec/stage.md §4), over the engine's
-- natives. A socket object is an empty table whose metatable reaches its state by id, so
-- `socket.commit(v)` works without `self` and user fields live beside the engine's.
local E, P = ...

local type, tostring, select, setmetatable, error = type, tostring, select, setmetatable, error

local sockets = {}                        -- id -> object, for live sockets of this core
local state = setmetatable({}, { __mode = "k" }) -- object -> private state
local listener_cache = {}                 -- listener id -> re-created callbacks, by version

local Socket = {}

-- socket.commit's work for socket `id`; fastpath.lua replaces this with the FFI version.
function P.commit_id(id, v)
  return E.commit(id, v)
end

-- The local address of a connection (binary sockaddr); fastpath.lua has an FFI version.
function P.local_addr(id)
  return E.conn_get(id, "local")
end

-- Listeners and UDP endpoints keep their callbacks and settings in the engine (every core
-- serves them); connections keep theirs here.
local function endpoint(st)
  return st[2] == "listener" or st[2] == "udp"
end

-- A socket's private state is an array, one slot per field every socket has:
--   [1] id  [2] kind  [3] peer (an accepted connection's: filled on first use)
--   [4] receive  [5] on_close (the script's callback)  [6] stage  [7] commit (the method)
--   [8] close (the method)
-- and, made on first use in its hash part, `user` (the table of user fields), `localaddr`
-- and `connect` (a join's callback).
--
-- An idle connection costs what its objects hold (BENCHMARKS.md "Memory per idle
-- connection"): array slots are 8 bytes where hash slots are 24 and the array sits in the
-- table's own allocation; the two methods share one upvalue (`st`); the table of user fields
-- is made on first use. The methods are made here, not on first use: making a closure (FNEW)
-- aborts a LuaJIT trace, and a receive path that made one for each new socket got its traces
-- blacklisted (the packet path then ran interpreted, 15-30% more CPU per round trip with 64
-- or 1000 clients).
local function close_socket(st)
  if endpoint(st) then return E.listener_close(st[1]) end
  return E.close(st[1])
end

local function new_socket(id, kind, peer, receive, on_close, stage)
  local s = setmetatable({}, Socket)
  -- Every slot is set by the constructor from a variable: a constant in it (`false`) would
  -- make a template table whose leftover 2-slot hash part every copy gets (48 bytes).
  local st, commit
  if kind == "udp" then
    commit = function(v, addr) return E.udp_send(st[1], v, addr) end
  else
    commit = function(v) return P.commit_id(st[1], v) end
  end
  st = { id, kind, peer, receive, on_close, stage, commit, function() return close_socket(st) end }
  state[s] = st
  sockets[id] = s
  return s, st
end

-- The table of user fields of `st`, made on first use.
local function user_of(st)
  local user = st.user
  if user == nil then
    user = {}
    st.user = user
  end
  return user
end

local READ_ONLY = { id = true, errno = true, [0] = true, [1] = true, [-1] = true }

Socket.__index = function(s, k)
  local st = state[s]
  if k == "id" or k == 0 then return st[1]
  elseif k == "commit" then return st[7]
  elseif k == "close" then return st[8]
  elseif k == 1 then
    local peer = st[3]
    if peer == nil and st[2] == "conn" then
      peer = E.conn_get(st[1], "peer")
      st[3] = peer
    end
    return peer
  elseif k == -1 then
    if endpoint(st) then return E.listener_get(st[1], "local") end
    st.localaddr = st.localaddr or P.local_addr(st[1])
    return st.localaddr
  elseif k == "errno" then return E.conn_get(st[1], "errno")
  elseif k == "crypto" then
    if st[2] == "udp" then return false end
    if endpoint(st) then return E.listener_get(st[1], "crypto") end
    return E.conn_get(st[1], "crypto")
  elseif k == "receive" then
    if st[2] == "udp" then
      local L = P.listener_callbacks(st[1])
      return L and (L.receive or L.accept)
    end
    if st[2] == "listener" then return P.listener_callbacks(st[1]).receive end
    return st[4]
  elseif k == "expire" or k == "commit_interval" then
    if endpoint(st) then return E.listener_get(st[1], k) end
    return E.conn_get(st[1], k)
  end
  local user = st.user
  if user == nil then return nil end
  return user[k]
end

local function set_callback(st, k, v)
  if v ~= nil and type(v) ~= "function" then
    error("socket." .. k .. " must be a function or nil, got " .. type(v), 3)
  end
  if endpoint(st) then
    E.listener_set(st[1], k, v and P.dump(v, "socket." .. k))
  elseif k == "close" then
    st[5] = v -- slot 8 is the `close` method
  else
    st[4] = v
  end
end

local function set_number(st, k, v)
  if v ~= nil and type(v) ~= "number" then
    error("socket." .. k .. " must be a number (msec) or nil, got " .. type(v), 3)
  end
  if endpoint(st) then E.listener_set(st[1], k, v) else E.conn_set(st[1], k, v) end
end

Socket.__newindex = function(s, k, v)
  local st = state[s]
  if k == "receive" or k == "close" then set_callback(st, k, v)
  elseif k == "expire" then set_number(st, k, v)
  -- Reading `socket.commit` gives the method; assigning a number sets the flush interval.
  elseif k == "commit" then set_number(st, "commit_interval", v)
  elseif k == "crypto" then
    -- A datagram has no stream to mark frames in: UDP refuses crypto (docs/compat.md).
    if st[2] == "udp" then
      if v ~= nil then error("socket.crypto: UDP sockets do not support crypto (use tcp://)", 2) end
    elseif endpoint(st) then E.listener_set(st[1], "crypto", v)
    else E.conn_set(st[1], "crypto", v) end
  elseif READ_ONLY[k] then error("socket field `" .. tostring(k) .. "` is read-only", 2)
  else user_of(st)[k] = v end
end

-- socket(key, fn): read-modify-write of a user field.
Socket.__call = function(s, k, fn)
  local user = user_of(state[s])
  user[k] = fn(user[k])
  return user[k]
end

Socket.__tostring = function(s)
  local st = state[s]
  local what = st[2] == "listener" and "listener: " or st[2] == "udp" and "udp: " or "socket: "
  return what .. tostring(st[1])
end

-- Callbacks of a listener as this core knows them, re-created when the script changes them.
function P.listener_callbacks(lid)
  local cached = listener_cache[lid]
  local version = E.listener_version(lid)
  if cached and cached.version == version then return cached end
  if version == nil then return nil end
  local _, accept, receive, close = E.listener_props(lid)
  cached = {
    version = version,
    accept = P.undump(accept, "=accept"),
    receive = receive and P.undump(receive, "=receive"),
    close = close and P.undump(close, "=close"),
  }
  listener_cache[lid] = cached
  return cached
end

local function forget(id)
  sockets[id] = nil
end

-- Engine hooks -----------------------------------------------------------------------------

-- A connection was accepted on this core; returns false to reject it (spec §4.3).
function P.hooks.accept(lid, id, peer, stage)
  P.stage = stage
  local L = P.listener_callbacks(lid)
  if not L then return false end
  -- The peer is not kept while the connection is open (s[1] asks the engine on first use):
  -- 44 bytes of every idle connection. The close hook hands it over.
  local unknown
  local s, st = new_socket(id, "conn", unknown, L.receive, L.close, stage)
  local ok, r = P.try("accept callback", L.accept, s, peer)
  if not ok or r == false then
    forget(id)
    return false
  elseif type(r) == "function" then
    st[4] = r
  elseif r ~= true and r ~= nil then
    E.log("warn", "accept callback returned a " .. type(r) .. "; treating it as true")
  end
  return true
end

-- Every value a receive callback returned is committed (to `addr` for a UDP datagram).
local function commit_results(commit, addr, ok, ...)
  if not ok then
    P.report("receive callback", (...))
    return
  end
  local n = select("#", ...)
  if n == 1 then
    -- The usual case without a loop: LuaJIT compiles loops on their own, and a loop that
    -- runs once per message here made every trace through the receive path stop at it.
    local v = ...
    if v ~= nil then commit(v, addr) end
    return
  end
  for i = 1, n do
    local v = select(i, ...)
    if v ~= nil then commit(v, addr) end
  end
end

-- One received message for socket `id`: its receive callback runs and every value it
-- returns is committed back (spec/stage.md §4.5).
function P.deliver(id, data)
  local s = sockets[id]
  if s == nil then return end
  local st = state[s]
  local f = st[4]
  if f == nil then return end
  P.stage = st[6]
  commit_results(st[7], nil, xpcall(f, P.handler, s, data))
end

P.hooks.receive = P.deliver

-- One UDP datagram for endpoint `lid` (spec §4.2): the receive callback gets the sender's
-- address, and what it returns goes back to that address.
function P.hooks.datagram(lid, stage, data, addr)
  local s = sockets[lid]
  if s == nil then s = new_socket(lid, "udp") end
  local L = P.listener_callbacks(lid)
  local f = L and (L.receive or L.accept)
  if f == nil then return end
  P.stage = stage
  commit_results(state[s][7], addr, xpcall(f, P.handler, s, data, addr))
end

-- `broker.signal(socket, v)` and `broker.submit(socket, f, ...)` run here, on the owning
-- core, in order with the socket's receive callbacks.
P.posts.inject = function(m, payload)
  local s = sockets[m.id]
  if s == nil then return end
  local st = state[s]
  P.stage = st[6]
  if m.f ~= nil then
    local ok, n = P.try("broker.submit function", m.f, s, P.unpack_values(m.v))
    if ok and type(n) == "number" and n > 0 then E.later(n, "inject", payload) end
  elseif st[4] ~= nil then
    commit_results(st[7], nil, xpcall(st[4], P.handler, s, m.data))
  end
end

function P.hooks.close(id, errno, peer)
  local s = sockets[id]
  if s == nil then return end
  local st = state[s]
  if st[3] == nil then st[3] = peer end
  forget(id)
  P.stage = st[6]
  local f = st[5]
  if f ~= nil then P.try("close callback", f, s, errno) end
end

function P.hooks.connected(id, peer)
  local s = sockets[id]
  if s == nil then return end
  local st = state[s]
  st[3] = peer
  P.stage = st[6]
  if st.connect then P.try("join callback", st.connect, s, peer) end
end

-- The broker library ---------------------------------------------------------------------

local function is_udp(url)
  return type(url) == "string" and url:sub(1, 6) == "udp://"
end

function broker.ready(url, cb)
  if type(url) ~= "string" then error("broker.ready: url must be a string", 2) end
  local bc = P.dump(cb, "broker.ready callback")
  local ok, v = E.ready(url, bc, P.stage)
  if not ok then return v end
  -- UDP: `cb` is the receive callback itself (spec §4.3).
  local s = new_socket(v, is_udp(url) and "udp" or "listener")
  P.last_listener = s
  return s
end

function broker.join(url, cb, timeout)
  if type(url) ~= "string" then error("broker.join: url must be a string", 2) end
  if is_udp(url) then error("broker.join: Unsupported type (udp)", 2) end
  -- A WebSocket client is not built in: ws:// is a listener scheme only.
  if url:match("^wss?://") then error("broker.join: Unsupported type (ws)", 2) end
  if timeout ~= nil and type(timeout) ~= "number" then
    error("broker.join: timeout must be a number (msec)", 2)
  end
  local f = P.undump(P.dump(cb, "broker.join callback"), "=join")
  local ok, v = E.join(url, timeout or 3000)
  if not ok then return v end
  local s, st = new_socket(v, "conn", nil, nil, nil, P.stage)
  st.connect = f
  return s
end

local function close_one(x)
  if type(x) == "number" then
    if sockets[x] and endpoint(state[sockets[x]]) then return E.listener_close(x) end
    return E.close(x)
  elseif type(x) == "table" and state[x] then
    return state[x][8]()
  end
end

function broker.close(x)
  if type(x) == "table" and not state[x] then
    for _, v in pairs(x) do close_one(v) end
  else
    close_one(x)
  end
end

-- Sockets of this core only: an id owned by another core gives nil (see docs/compat.md).
function broker.f(id)
  return sockets[id]
end

local function owner(x)
  if type(x) == "table" and state[x] then return state[x][1] end
  if type(x) == "number" then return x end
  error("expected a socket or a socket id, got " .. type(x), 3)
end

function broker.signal(target, v, addr)
  if type(target) == "table" and not state[target] then
    -- Group send: socket ids, binary sockaddrs (one UDP datagram each) and one function
    -- called afterwards with (elapsed, v).
    local started, after = os.clock(), nil
    for _, x in pairs(target) do
      if type(x) == "function" then after = x
      elseif type(x) == "number" then E.commit(x, v)
      elseif type(x) == "string" then E.udp_send_to(x, v)
      else error("broker.signal: group members must be socket ids, addresses or one function", 2) end
    end
    if after then P.try("broker.signal callback", after, os.clock() - started, v) end
    return
  end
  if type(target) == "string" then
    -- A binary sockaddr: one UDP datagram with the BSON of `v`.
    if type(v) ~= "table" then error("broker.signal: a datagram to an address needs a table", 2) end
    return E.udp_send_to(target, v)
  end
  local id = owner(target)
  E.post(P.owner_core(id), "inject", E.encode({ id = id, data = v }))
end

function broker.submit(target, f, ...)
  if type(f) ~= "function" then error("broker.submit: expected a function", 2) end
  local id = owner(target)
  E.post(P.owner_core(id), "inject", E.encode({ id = id, f = f, v = P.pack(...) }))
end

-- broker.encrypt/decrypt(key_or_socket, ...): a key form as for `socket.crypto`, or a socket
-- (connection of this core or listener) whose key is used.
local function key_args(x)
  local st = type(x) == "table" and state[x]
  if st then return nil, st[1], endpoint(st) end
  return x, nil, false
end

function broker.encrypt(x, v)
  local key, id, listener = key_args(x)
  return E.encrypt(key, id, listener, v)
end

function broker.decrypt(x, bytes)
  if type(bytes) ~= "string" then error("broker.decrypt: expected a string of bytes", 2) end
  local key, id, listener = key_args(x)
  return E.decrypt(key, id, listener, bytes)
end
