-- Prelude, part 3 of 3: `stage.load` / `stage.require` (spec/stage.md §3.1-3.2), the logger
-- aliases, `stage.exit`, and the hooks that boot a stage's main script and run its idle
-- function. Cross-stage messaging (signal, waitfor, addtask, submit...) is not in this build:
-- those names raise a clear error instead of silently doing nothing.
local E, P = ...

local type, error, getfenv, setfenv, rawget, setmetatable = type, error, getfenv, setfenv, rawget, setmetatable

-- "file+key" -> "file", "key"; the key is optional.
local function split_name(name)
  if type(name) ~= "string" then error("script name must be a string, got " .. type(name), 3) end
  local file, key = name:match("^([^+]*)%+(.*)$")
  if file == nil then return name, nil end
  return file, key
end

local function select_key(v, key)
  if key ~= nil and type(v) == "table" then return rawget(v, key) end
  return v
end

-- Runs a cached chunk in the environment of the code that asked for it.
local function run_chunk(chunk, env)
  setfenv(chunk, env)
  return (chunk())
end

function stage.load(name, f)
  local file, key = split_name(name)
  local chunk, position, path, mtime = E.load(file)
  if chunk == nil then
    if f ~= nil then return f(nil, { position, key }) end
    error("stage.load: script `" .. file .. "` not found in %package", 2)
  end
  local v = select_key(run_chunk(chunk, getfenv(2)), key)
  if f ~= nil then return f(v, { position, path, mtime }) end
  return v
end

local required = {}
function stage.require(name, f)
  local file, key = split_name(name)
  local entry = required[file]
  if entry == nil then
    local chunk, position, path, mtime = E.load(file)
    if chunk == nil then
      if f ~= nil then return f(nil, { position, key }) end
      error("stage.require: script `" .. file .. "` not found in %package", 2)
    end
    entry = { value = run_chunk(chunk, getfenv(2)), info = { position, path, mtime } }
    required[file] = entry
  end
  local v = select_key(entry.value, key)
  if f ~= nil then return f(v, entry.info) end
  return v
end

function stage.exit()
  E.exit()
end

log4cxx = logger

-- The original's preload copies every bundle function into `stage` (spec/stage.md §2).
for name, f in pairs(bundle) do stage[name] = f end

-- `buffer.commit('sync', fn)` on a core: the msync runs off the core
-- (engine/src/script/bundle/viewof_sync.rs); fn(true) or fn(false, err) runs here, as the
-- stage that committed, once the rows are on disk.
local synced = {} -- handle -> { f, stage }
E.viewof_keeper(function(h, f) synced[h] = { f = f, stage = P.stage } end)
P.posts.viewof_synced = function(m)
  local kept = synced[m.h]
  if kept == nil then return end
  synced[m.h] = nil
  P.stage, P.waitfor = kept.stage, nil
  P.try("viewof commit callback", kept.f, m.e == nil, m.e)
end
-- The platform modules are `require`-able as in the original (`odbc` in odbc.lua).
package.loaded.broker, package.loaded.bundle, package.loaded.logger = broker, bundle, logger
package.loaded.stage = stage
-- `local lotus = require("lotus")`: the seed's lotus client (engine/lua/lib/lotus.lua), in every
-- state, without `%package` entries.
local lotus_client = E.lotus_client
package.preload.lotus = function ()
  return assert(load(lotus_client, "@builtin/lib/lotus.lua", "t"))()
end

-- Engine hooks -----------------------------------------------------------------------------

-- Runs a stage's main script in the stage's own global table (callbacks re-created on other
-- contexts see the core's globals, not these). Returns the idle function, if any.
P.stage_env = {}   -- stage index -> the globals of its main script (main core only)

function P.hooks.boot(index, entry, script, args)
  P.stage = index
  local chunk, position, path = E.load(script)
  if chunk == nil then
    E.log("warn", "main script `" .. script .. "` of `" .. entry .. "` not found in %package; the stage has no handlers")
    return nil
  end
  if position > 0 then E.log("warn", "main script of `" .. entry .. "` runs from fail-over copy " .. path) end
  -- The original README's Hello World assigns `socket.receive` right after `broker.ready`:
  -- in a main script, an undefined global `socket` is the listener it opened last.
  local env = setmetatable({ arg = args }, {
    __index = function(_, k)
      if k == "socket" then return P.last_listener end
      return _G[k]
    end,
    -- Shared (`_SANDBOX`) names go to the store, everything else stays in this stage.
    __newindex = function(t, k, v) P.global_set(t, k, v) end,
  })
  P.stage_env[index] = env
  setfenv(chunk, env)
  local ok, r = P.try("main script " .. path, chunk, unpack(args))
  if not ok then return nil end
  if type(r) == "function" then return r end
  if type(r) == "table" then
    -- Every function field becomes a message handler under its key (spec §3.8).
    for name, f in pairs(r) do
      if type(name) == "string" and type(f) == "function" then stage.waitfor(name, f) end
    end
  end
  return nil
end

-- Calls the idle function; returns the msec until the next call, or nil to stop.
function P.hooks.idle(stage, f)
  P.stage = stage
  local ok, n = P.try("idle function", f)
  if ok and type(n) == "number" then return n end
  return nil
end

-- A reload switched these script names (`script::reload`): `stage.require` runs each of them
-- again on its next call, so a required module changes with the files like `stage.load`.
function P.hooks.reloaded(names)
  for _, name in ipairs(names) do required[name] = nil end
end
