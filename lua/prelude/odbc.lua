-- Prelude, part 8: `odbc` (spec/services.md §1.2) over the engine's handles
-- (script/odbc_lua.rs). ODBC calls block, so they run only on the blocking pool: inside a
-- `thread.new` function. On a core `odbc.new` raises instead of stalling every connection of
-- that core. Objects are tables of dot-called functions (`db.execute(sql, params)`), as the
-- spec writes them. Not here yet: the editable rows tree and `apply`, `odbc.cache`,
-- `odbc.purge`, OUTPUT parameters.
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
  cache = function() error("odbc.cache is not supported yet in this build", 2) end,
  purge = function() error("odbc.purge is not supported yet in this build", 2) end,
}
