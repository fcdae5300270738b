-- Prelude, part 8: `odbc` (spec/services.md §1.2) over the engine's handles
-- (script/services/odbc.rs). ODBC calls block, so they run only on the blocking pool: inside a
-- `thread.new` function. On a core `odbc.new` raises instead of stalling every connection of
-- that core. Objects are tables of dot-called functions (`db.execute(sql, params)`), as the
-- spec writes them. Not here yet: the editable rows tree and `apply`, OUTPUT parameters.
local E, P = ...

local type, error, tostring, setmetatable, pcall, select, unpack =
  type, error, tostring, setmetatable, pcall, select, unpack

local function result_object(r, sql)
  local rs = {}
  rs.fetch = function(keys, fn)
    if type(keys) == "function" then keys, fn = nil, keys end
    if type(keys) == "string" then keys = { keys } end
    local rows = E.odbc_fetch(r, keys)
    if fn ~= nil and type(rows) == "table" then return fn(rows) end
    return rows
  end
  rs.columns = function(fn)
    local cols = E.odbc_columns(r)
    if fn ~= nil and cols ~= nil then return fn(cols) end
    return cols
  end
  return setmetatable(rs, {
    __index = function(_, k)
      if k == "more" then return E.odbc_more(r) end
      if k == 0 or k == "_0" then return E.odbc_more(r) and 0 or 100 end
    end,
    __tostring = function() return "odbc: rs '" .. sql .. "'" end,
  })
end

local function adapter_object(h, label)
  local db = {}
  db.execute = function(sql, params)
    local specs
    if type(sql) == "table" then
      specs = {}
      for i = 2, #sql do specs[i - 1] = sql[i] end
      sql = sql[1]
    end
    if type(sql) ~= "string" then error("execute: sql must be a string or {sql, specs...}", 2) end
    if params ~= nil and type(params) ~= "table" then
      error("execute: params must be a table (an array of values)", 2)
    end
    local r, err = E.odbc_execute(h, sql, specs, params)
    if r == nil then
      E.log("warn", "[SQL] " .. tostring(err) .. " in '" .. sql .. "'")
      local tb = getfenv(2)._TRACEBACK
      if type(tb) == "function" then pcall(tb, "SQL -1 '" .. sql .. "'") end
      return
    end
    return result_object(r, sql)
  end
  db.begin = function(fn)
    local rc = E.odbc_tx(h, "begin")
    if fn == nil then
      if rc ~= 0 then return rc end
      return
    end
    if rc ~= 0 then return false end
    local ok, keep = pcall(fn, db)
    if ok and keep == true then return E.odbc_tx(h, "commit") == 0 end
    E.odbc_tx(h, "rollback")
    if not ok then error(keep, 0) end
    return false
  end
  db.commit = function() return E.odbc_tx(h, "commit") end
  db.rollback = function() return E.odbc_tx(h, "rollback") end
  db.close = function() return E.odbc_close(h) end
  return setmetatable(db, {
    __index = function(_, k)
      if k == "executeTimeout" then return E.odbc_timeout(h) end
    end,
    __newindex = function(_, k, v)
      if k ~= "executeTimeout" or type(v) ~= "number" then
        error("odbc adapter: only executeTimeout (seconds) can be set", 2)
      end
      E.odbc_timeout(h, v)
    end,
    __tostring = function() return "odbc: adapter '" .. label .. "'" end,
  })
end

local function finish(db, ok, ...)
  db.close()
  if not ok then error((...), 0) end
  return ...
end

odbc = {
  new = function(conn, fn)
    if E.core() ~= nil then
      error("odbc.new: ODBC calls block; call it inside thread.new(function () ... end), which runs on the blocking pool", 2)
    end
    if type(conn) == "table" then
      -- Lazy secrets: a function value is called for the value.
      local t = {}
      for k, v in pairs(conn) do
        if type(v) == "function" then v = v() end
        t[k] = v
      end
      conn = t
    end
    local h, label = E.odbc_open(P.stage, conn)
    if h == nil then
      E.log("warn", "odbc.new: cannot connect: " .. tostring(label))
      return
    end
    local db = adapter_object(h, label)
    if fn == nil then return db end
    return finish(db, pcall(fn, db))
  end,
  -- A process-wide cache of values by name (any Lua state reads the same; each read is a
  -- fresh copy). The loader runs unlocked; a caller that finds another's load in progress
  -- runs its own loader and keeps the result to itself.
  cache = function(name, loader)
    if type(name) ~= "string" then error("odbc.cache: name must be a string", 2) end
    local kind, v = E.odbc_cache_get(name)
    if kind == "value" then return P.unpack_values(E.decode(v)) end
    if loader == nil then return end
    if kind == "loading" or not E.odbc_cache_begin(name) then
      local ok, r = pcall(loader)
      if ok then return r end
      return
    end
    local ok, r = pcall(loader)
    if not ok or r == nil then
      E.odbc_cache_finish(name, nil)
      if not ok then P.report("odbc.cache loader `" .. name .. "`", r) end
      return
    end
    local stored, bytes = pcall(E.encode, P.pack(r))
    E.odbc_cache_finish(name, stored and bytes or nil)
    return r
  end,
  -- Removes the given names (all with no argument); returns those that were there.
  purge = function(names)
    if type(names) == "string" then names = { names } end
    return E.odbc_purge(names)
  end,
}

-- `odbc = require('odbc')` (the original's preloads start so) works in every state, a core's
-- included: the module is always there, and what cannot run on a core raises when called.
package.loaded.odbc = odbc
