-- Prelude, part 6: shared state and the process object (spec/stage.md §3.11, §7).
--   __.NAME / __.NAME = v / __("NAME", fn) / __[n]   the process-wide store
--   _SANDBOX[""] = { "*NAME", ["*RO"] = v }           globals shared by every state
--   process.id / tick / args / stage / ["%ENV"] / ["$"] / ["$KEY"] (all three assignable) /
--   title = "..."
-- Shared values are copies: reading gives a fresh snapshot, assigning replaces the value.
local E, P = ...

local type, error, setmetatable, rawget, rawset, tostring =
  type, error, setmetatable, rawget, rawset, tostring

-- The store ------------------------------------------------------------------------------------

local function space(n)
  return setmetatable({}, {
    __index = function(_, k) return E.shared_get(n, tostring(k)) end,
    __newindex = function(_, k, v) E.shared_set(n, tostring(k), v) end,
    __call = function(_, k, fn)
      if type(fn) ~= "function" then error("__(name, fn): fn must be a function", 2) end
      return E.shared_update(n, tostring(k), fn)
    end,
  })
end

local spaces = {}
local root = space(0)
__ = setmetatable({}, {
  __index = function(_, k)
    if type(k) == "number" then
      if k < 1 or k % 1 ~= 0 then error("__[n]: n must be a positive integer", 2) end
      spaces[k] = spaces[k] or space(k)
      return spaces[k]
    end
    return root[k]
  end,
  __newindex = function(_, k, v)
    if type(k) == "number" then
      if v ~= nil then error("__[n] can only be cleared (__[n] = nil)", 2) end
      return E.shared_clear(k)
    end
    root[k] = v
  end,
  __call = function(_, k, fn) return getmetatable(root).__call(root, k, fn) end,
})

-- Sandbox policies, cached per state until they change anywhere in the process ----------------

local policies, seen_version = {}, -1
local function policy(name)
  local version = E.sandbox_version()
  if version ~= seen_version then
    seen_version, policies = E.sandbox_policies()
  end
  return policies[name]
end
P.shared_policy = policy

-- A global that is shared lives in the store, not in this state's globals.
function P.global_get(name)
  if type(name) == "string" and policy(name) then return E.shared_get(0, name) end
  return nil
end

function P.global_set(t, name, v)
  local p = type(name) == "string" and policy(name)
  if p == "ro" then error("`" .. name .. "` is read only", 3) end
  if p then return E.shared_set(0, name, v) end
  rawset(t, name, v)
end

setmetatable(_G, {
  __index = function(_, k) return P.global_get(k) end,
  __newindex = function(t, k, v) P.global_set(t, k, v) end,
})

local function share(name, mode, value, has_value)
  if type(name) ~= "string" or name == "" then error('_SANDBOX[""]: bad name ' .. tostring(name), 3) end
  name = name:match("^([^:]*)") -- "*NAME:rule": key-translation rules are not kept
  if has_value then E.shared_set(0, name, value)
  elseif rawget(_G, name) ~= nil and E.shared_get(0, name) == nil then
    -- An existing global of this state becomes the shared value.
    E.shared_set(0, name, rawget(_G, name))
  end
  rawset(_G, name, nil)
  E.sandbox_set(name, mode)
end

_SANDBOX = setmetatable({}, {
  __index = function(_, k)
    if k == "" then
      local _, list = E.sandbox_policies()
      return list
    end
    local v = rawget(_G, k)
    if v ~= nil then return v end
    return P.global_get(k)
  end,
  __newindex = function(_, k, v)
    if k ~= "" then return P.global_set(_G, k, v) end
    if type(v) ~= "table" then error('_SANDBOX[""] must be a table of names', 2) end
    for key, value in pairs(v) do
      if type(key) == "number" then
        -- "*NAME" is shared by the whole process; a plain "NAME" is already shared by the
        -- coroutines of one state (this build does not isolate coroutine globals).
        if type(value) == "string" and value:sub(1, 1) == "*" then share(value:sub(2), "rw") end
      elseif type(key) == "string" and key:sub(1, 1) == "*" then
        share(key:sub(2), "ro", value, true)
      end
    end
  end,
})

-- process ---------------------------------------------------------------------------------------

local args_cache
process = setmetatable({}, {
  __index = function(_, k)
    if k == "id" then return E.pid() end
    if k == "tick" then return E.tick() end
    if k == "args" then
      args_cache = args_cache or E.args()
      return args_cache
    end
    -- This process's number among the #startup processes (1 in a single-process node).
    if k == "stage" then return (E.process_info()) end
    if type(k) ~= "string" then return nil end
    local first = k:sub(1, 1)
    if first == "%" then return E.env_get(k:sub(2)) end
    if first == "$" then
      local block = P.stage and E.config_block(P.stage)
      if block == nil then return nil end
      local t = bundle.json(block)
      if k == "$" then return t end
      return t[k:sub(2)]
    end
    return nil
  end,
  __newindex = function(_, k, v)
    if k == "title" then return E.set_title(tostring(v)) end
    local first = type(k) == "string" and k:sub(1, 1)
    if first == "%" then
      -- An overlay seen by process["%NAME"] in every Lua state of the process (not setenv).
      return E.env_set(k:sub(2), v ~= nil and tostring(v) or nil)
    end
    if first == "$" then
      if P.stage == nil then error("process[\"" .. k .. "\"]: not inside a stage", 2) end
      if v ~= nil and type(v) ~= "string" then
        error("process[\"" .. k .. "\"] takes a JSON string, not a " .. type(v), 2)
      end
      local ok, err = pcall(E.config_set, P.stage, k ~= "$" and k:sub(2) or nil, v)
      if not ok then error(err, 2) end
      return
    end
    error("process." .. tostring(k) .. " cannot be assigned (only title, [\"%NAME\"] and [\"$NAME\"])", 2)
  end,
})
