-- Prelude, part 1 of 3: error handling, callback re-creation and the sandbox.
-- Runs once in every core's LuaJIT state before any user script, with `E` (the engine's
-- natives, never visible to users) and `P` (private state shared by the prelude parts).
local E, P = ...

local tostring, type, select, xpcall, setfenv = tostring, type, select, xpcall, setfenv
-- The FFI is the engine's own tool (the fast path in fastpath.lua); kept here before the
-- sandbox below takes it away from everything user scripts can reach.
P.ffi = require("ffi")
local traceback = debug.traceback
local raw_load, string_dump = load, string.dump

-- Every user callback runs under this handler: the error and its traceback are logged and
-- the callback counts as having returned nothing (spec/stage.md §2).
local function handler(err)
  return traceback(tostring(err), 2)
end
P.handler = handler

P.posts = {}    -- kind -> function(decoded payload): what other cores (or timers) ask of us
P.stage = nil   -- the stage the running code belongs to (index), set at every entry

-- Values travel packed, { n = count, ... }, so nils keep their positions.
function P.pack(...)
  return { n = select("#", ...), ... }
end

function P.unpack_values(t)
  if t == nil then return end
  return unpack(t, 1, t.n or #t)
end

-- Socket ids carry their owning core in the low byte (see net::id::ConnId).
function P.owner_core(id)
  return id % 256
end

function P.hooks.post(kind, payload)
  local handler = P.posts[kind]
  if handler == nil then
    E.log("warn", "no handler for posted message kind " .. tostring(kind))
    return
  end
  local ok, m = pcall(E.decode, payload)
  if not ok then
    P.report("posted " .. kind, m)
    return
  end
  -- The raw payload comes along so a job that runs again runs with its original arguments.
  P.try(kind, handler, m, payload)
end

-- The same error over and over (a receive callback failing on every packet, a timer failing
-- every tick) is logged once per second with a count, not once per occurrence: a traceback
-- per packet would cost more than the packets and bury every other line.
local recent, recent_count = {}, 0
local REPEAT_MS = 1000

-- What the admin endpoint's scrape reads of this state (`P.hooks.stats`): every script error
-- (also the ones the log folds into a count) and the messages `route` handled by policy.
-- Plain Lua numbers: this state belongs to one core, nothing else touches them.
P.errors = 0
P.routed = { one = 0, all = 0, node = 0, remote = 0 }
P.unrouted = { one = 0, all = 0, node = 0, remote = 0 }

function P.hooks.stats()
  return P.errors, P.routed, P.unrouted
end

function P.report(where, err)
  P.errors = P.errors + 1
  local text = where .. " failed: " .. tostring(err)
  local now = E.wall_ms()
  local r = recent[text]
  if r ~= nil and now - r.at < REPEAT_MS then
    r.skipped = r.skipped + 1
    return
  end
  if r ~= nil and r.skipped > 0 then
    text = text .. "\n(the same error " .. r.skipped .. " more time(s) in the second before)"
  end
  if r == nil then
    if recent_count >= 256 then recent, recent_count = {}, 0 end -- bounded memory
    recent_count = recent_count + 1
    r = {}
    recent[where .. " failed: " .. tostring(err)] = r
  end
  r.at, r.skipped = now, 0
  E.log("warn", text)
end

-- Calls f(...) protected; on error logs it under `where` and returns false.
function P.try(where, f, ...)
  return P.check(where, xpcall(f, handler, ...))
end

function P.check(where, ok, ...)
  if not ok then
    P.report(where, (...))
    return false
  end
  return true, ...
end

-- A callback that crosses into another context is re-created from its bytecode: it keeps
-- its code and globals but none of its upvalues (spec/stage.md §1.3).
function P.dump(f, what)
  if type(f) ~= "function" then
    error(what .. " must be a function, got " .. type(f), 3)
  end
  local ok, bc = pcall(string_dump, f)
  if not ok then
    error(what .. " must be a Lua function (C functions cannot be moved between cores)", 3)
  end
  return bc
end

function P.undump(bc, name)
  local f, err = raw_load(bc, name or "=callback", "b")
  if not f then
    error("cannot re-create callback: " .. tostring(err))
  end
  return f
end

-- The sandbox: scripts never reach the FFI, the JIT controls, the debug library, native
-- modules, or a loader that accepts bytecode (bytecode from a peer would hand it the VM).
local function text_only_load(chunk, name, _, env)
  local f, err = raw_load(chunk, name, "t")
  if f and env ~= nil then setfenv(f, env) end
  return f, err
end
load = text_only_load
loadstring = function(s, name) return raw_load(s, name, "t") end
local raw_loadfile = loadfile
loadfile = function(path, _, env)
  local f, err = raw_loadfile(path, "t")
  if f and env ~= nil then setfenv(f, env) end
  return f, err
end
dofile = function(path)
  local f = assert(loadfile(path))
  return f()
end
debug = { traceback = traceback }
jit = nil
package.loaded.debug, package.loaded.jit, package.loaded.ffi = nil, nil, nil
package.loaded["jit.opt"], package.loaded["jit.util"] = nil, nil
package.preload.ffi = nil
package.loadlib = nil
package.cpath = ""
-- Keep only the preload and Lua-file searchers: no C modules.
package.loaders[3], package.loaders[4] = nil, nil
