-- Prelude, part 5: `thread` (spec/stage.md §3.9). `thread.new(f, ...)` runs f on the blocking
-- pool (never on a core) in that thread's own Lua state; every `thread.signal(...)` and f's
-- return values come back, in order, to the handler given to `.waitfor(g, ...)`, which runs
-- on the core that called `thread.new`. Values sent before the handler is set are kept until
-- it is; the entry is dropped 1000 msec after f finished.
local E, P = ...

local type, setfenv, getfenv, error, tostring = type, setfenv, getfenv, error, tostring
local pack, unpack_values = P.pack, P.unpack_values

local running = {} -- thread id -> { g, args, pending, stage } on the calling core

local function deliver(entry, values)
  local args, n = {}, 0
  for i = 1, entry.args.n do args[i] = entry.args[i] end
  n = entry.args.n
  for i = 1, values.n or #values do args[n + i] = values[i] end
  n = n + (values.n or #values)
  P.stage, P.waitfor = entry.stage, nil
  P.try("thread waitfor handler", entry.g, unpack(args, 1, n))
end

local methods = {}

thread = setmetatable({}, {
  __index = function(_, k)
    if k == "id" then return E.thread_id() end
    if k == "tick" then return E.tick() end
    return methods[k]
  end,
  __newindex = function() error("thread is read-only", 2) end,
})

function methods.new(f, ...)
  local origin = E.core()
  if origin == nil then error("thread.new: call it from a core, not from another thread", 2) end
  P.dump(f, "thread.new function") -- refuse C functions here, not on the pool thread
  local id = E.thread_start(E.encode({ f = f, v = pack(...), o = origin, s = P.stage }))
  local entry = { pending = {}, stage = P.stage }
  running[id] = entry
  local object = {}
  object.waitfor = function(g, ...)
    if g == nil then
      running[id] = nil
      return
    end
    entry.g = P.undump(P.dump(g, "thread waitfor handler"), "=thread.waitfor")
    setfenv(entry.g, getfenv(2))
    entry.args = pack(...)
    local pending = entry.pending
    entry.pending = {}
    for i = 1, #pending do deliver(entry, pending[i]) end
    return tostring(id)
  end
  return object
end

function methods.signal(...)
  local ctx = P.thread_ctx
  if ctx == nil then error("Thread is not in use", 2) end
  E.post(ctx.o, "thread", E.encode({ t = ctx.t, v = pack(...) }))
end

-- On the calling core: a value (or the end) of one of our threads.
P.posts.thread = function(m)
  local entry = running[m.t]
  if entry == nil then return end
  if m.done then E.later(1000, "thread_end", E.encode({ t = m.t })) end
  if m.v == nil then return end
  if entry.g == nil then
    entry.pending[#entry.pending + 1] = m.v
  else
    deliver(entry, m.v)
  end
end

P.posts.thread_end = function(m)
  running[m.t] = nil
end

-- On a pool thread: run the function, then report its results (or just the end).
local function finish(id, origin, ok, ...)
  if not ok then
    P.report("thread.new function", (...))
    E.post(origin, "thread", E.encode({ t = id, done = true }))
    return
  end
  E.post(origin, "thread", E.encode({ t = id, v = pack(...), done = true }))
end

function P.hooks.thread(id, payload)
  local m = E.decode(payload)
  P.thread_ctx, P.stage, P.waitfor = { t = id, o = m.o }, m.s, nil
  finish(id, m.o, xpcall(m.f, P.handler, unpack_values(m.v)))
  E.odbc_release_all() -- adapters the function left open go back to the pool
  P.thread_ctx = nil
end
