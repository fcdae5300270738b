-- Prelude, part 4: messages between stages (spec/stage.md §3.3-3.8, §10). `stage.signal`
-- parses the target grammar and `route` posts the message to the main core of every receiving
-- stage of this process, or sends it as a datagram to another process of the node, or through
-- NATS to a member of another node (engine/src/cluster), which posts it the same way on
-- arrival; there it meets the stage's handler table (kept
-- process-wide by the engine, so `":msg"` calls and `stage.waitfor(id)` queries work from any
-- core). Handlers, timers and jobs are
-- re-created from bytecode: they see the globals of where they run, never upvalues.
local E, P = ...

local type, select, error, tostring, pairs, setfenv, getfenv, unpack, pcall, xpcall =
  type, select, error, tostring, pairs, setfenv, getfenv, unpack, pcall, xpcall
local pack, unpack_values = P.pack, P.unpack_values

local stage_ids = setmetatable({}, {
  __index = function(t, index)
    local id = E.stage_info(index)
    t[index] = id
    return id
  end,
})

-- The built-in service a stage runs ("index", "ticket", "route"), or false for a Lua stage.
local service_of = setmetatable({}, {
  __index = function(t, index)
    local _, _, service = E.stage_info(index)
    t[index] = service or false
    return t[index]
  end,
})

local function current_stage(level)
  local s = P.stage
  if s == nil then error("not inside a stage: this call needs a stage's script or callback", level + 1) end
  return s
end

-- One stored value comes back as itself, several as a table (spec §3.8 query form).
local function stored_value(args)
  if args == nil then return nil end
  local t = E.decode(args)
  if t.n == 1 then return t[1] end
  t.n = nil
  return t
end

local function encode_values(...)
  if select("#", ...) == 0 then return nil end
  return E.encode(pack(...))
end

-- Compiled handlers of this core, by stage and id, re-created when re-registered.
local compiled = {}
local function handler_function(stage, id, serial, code)
  local key = stage .. "\0" .. id
  local c = compiled[key]
  if c ~= nil and c.serial == serial then return c.f end
  local f = P.undump(code, "=waitfor " .. id)
  compiled[key] = { serial = serial, f = f }
  return f
end

-- f(stored args..., message values...)
local function call_with(f, stored, values)
  local args, n = {}, 0
  if stored ~= nil then
    local t = E.decode(stored)
    for i = 1, t.n or #t do args[i] = t[i] end
    n = t.n or #t
  end
  if values ~= nil then
    for i = 1, values.n or #values do args[n + i] = values[i] end
    n = n + (values.n or #values)
  end
  return f(unpack(args, 1, n))
end

-- Delivery ---------------------------------------------------------------------------------

local route -- forward

-- This process's number, and whether the node has other processes (spec §1.1, §10.3).
local ME, MULTI = E.process_info()
-- This process's name as a member of the cluster (`<node>.<process>`), or nil: no cluster.
local CLUSTER = E.cluster_me()
-- `<node>.`: the members of this node (another process of it is reached through `peers`).
local OWN_NODE = CLUSTER and CLUSTER:match("^(.*%.)%d+$")

-- The member of this node's process `p`.
local function member_of(p)
  return OWN_NODE .. p
end

-- Whether cluster member `m` runs on this node.
local function on_this_node(m)
  return OWN_NODE ~= nil and m:sub(1, #OWN_NODE) == OWN_NODE and m:find(".", #OWN_NODE + 1, true) == nil
end

-- Sharded services (index.so, `=ticket`: service::shard) ------------------------------------
-- A message for a stage goes to the core that handles it: a Lua stage's or `=route`'s main
-- core, the shard owning the index or category a service command names. An index.so batch
-- may name indexes owned by several cores: it is split into one part per core, and when a
-- reply is due, the core that split it gathers the parts' results into the one reply.

local gathers, gather_seq = {}, 0

local function split_batch(m)
  local batch = m.v and m.v[1]
  local parts, cores, bad = {}, 0, nil
  if type(batch) == "table" then
    for k, v in pairs(batch) do
      if type(k) == "string" then
        local core = E.stage_core(m.t, k)
        if core == nil then
          bad = bad or {} -- not a command: whichever core runs it logs it
          bad[k] = v
        else
          if parts[core] == nil then parts[core], cores = {}, cores + 1 end
          parts[core][k] = v
        end
      end
    end
  end
  m.b = true -- split: every key is the receiving core's own
  if cores <= 1 then
    local core = next(parts)
    if core == nil then _, core = E.stage_info(m.t) end
    return E.post(core, "msg", E.encode(m))
  end
  if bad ~= nil then
    local first = parts[next(parts)]
    for k, v in pairs(bad) do first[k] = v end
  end
  local gid
  if m.r ~= nil then
    gather_seq = gather_seq + 1
    gid = gather_seq
    gathers[gid] = { left = cores, r = m.r, rp = m.rp, rn = m.rn, out = {} }
  end
  for core, part in pairs(parts) do
    E.post(core, "msg", E.encode({ t = m.t, i = m.i, d = m.d, v = { n = 1, part }, b = true, g = gid, gc = E.core() }))
  end
end

-- Posts message `m` ({t = stage, i = id, ...}) to the core that handles it.
local function post_to_stage(m)
  local core = E.stage_core(m.t, m.i)
  if core == nil then return split_batch(m) end
  E.post(core, "msg", E.encode(m))
end

-- Posts message `id` to the stages `targets` of this process (all of them, or the first).
-- `rp` is the process of the sender when it is another one.
local function post_local(targets, every, id, reply_to, deadline, values, rp)
  for k, t in ipairs(targets) do
    post_to_stage({ t = t, i = id, r = reply_to, rp = rp, d = deadline, v = values })
    if not every and k == 1 then return end
  end
end

-- Delivers to the stages of `group` in this process only (replies, lock grants).
local function deliver_here(group, id, reply_to, deadline, values)
  local targets = E.stage_by_id(group)
  if #targets == 0 then return E.unrouted(group .. ":" .. id) end
  post_local(targets, false, id, reply_to, deadline, values)
end

-- Sends values back to the stage that asked (the `_WAITFOR` of the request): straight to
-- the requesting process (`_WAITFOR[1]`) of the requesting member (`_WAITFOR[3]`, nil: this
-- node), never load-balanced (spec §10.4).
-- Sends message `ret` with `values` to stage `to` of process `rp` (nil: the requester is local)
-- of cluster member `rn` (nil: this node). `from` (the replying stage) and `fp` (its process)
-- name the sender without making it a reply address: a reply is never answered, but a
-- service such as `=route` must know who claims an offer (spec/services.md §4.3).
local function send_reply(to, rp, ret, values, from, rn)
  if rn ~= nil and not on_this_node(rn) then
    -- The asking member is on another node: straight to it, never load-balanced. No `fp`:
    -- a process number means nothing on the other node.
    if CLUSTER == nil then return E.unrouted(to .. ":" .. ret .. " (a reply to another node)") end
    -- `rn` names this member as the sender (so a `=ticket` / `=route` stage there knows the
    -- reply is not from its own node).
    E.cluster_send(rn, to, false, E.encode({ i = ret, v = values, f = from, fp = ME, rn = CLUSTER }))
    return
  end
  if MULTI and rp ~= nil and rp ~= ME then
    E.send_process(rp, to, false, E.encode({ i = ret, v = values, f = from, fp = ME }))
    return
  end
  local targets = E.stage_by_id(to)
  if #targets == 0 then return E.unrouted(to .. ":" .. ret) end
  post_to_stage({ t = targets[1], i = ret, v = values, f = from })
end

local function reply(w, ...)
  local to = w[2]
  if to == nil then return end
  local id = w[0]
  local ret = id:match("=([^?]*)") or id:match("^([^=?]*)")
  send_reply(to, w[1], ret, pack(...), P.stage and stage_ids[P.stage], w[3])
end

local function finish(w, ok, ...)
  if not ok then
    P.report("waitfor handler `" .. tostring(w[-1]) .. "`", (...))
    return
  end
  if select("#", ...) > 0 and w[2] ~= nil then reply(w, ...) end
end

-- Runs a handler with `_WAITFOR` set in its environment (and restored after), and `_TICKET`
-- when the message is a ticket grant (spec/services.md §3.3).
local function invoke(stage, env, f, w, stored, values, ticket)
  setfenv(f, env)
  local prev_env, prev_w, prev_stage, prev_ticket = env._WAITFOR, P.waitfor, P.stage, env._TICKET
  env._WAITFOR, P.waitfor, P.stage, env._TICKET = w, w, stage, ticket
  finish(w, xpcall(call_with, P.handler, f, stored, values))
  env._WAITFOR, P.waitfor, P.stage, env._TICKET = prev_env, prev_w, prev_stage, prev_ticket
end

-- Sends one output of a `=ticket` / `=route` service (`E.ticket_call` and friends): message
-- `o.i` to the stage named by its prefix. When that is the addressee's own stage, it goes to
-- the addressee's process `o.p` directly, like a reply (a grant must reach the process that
-- asked); a callback naming another stage (`lobby:cb`) is routed like any message. The
-- reply stage `o.r` is in process `o.rp`, else in this one.
local function send_service_output(o)
  local dest = o.i:match("^([^:]+):")
  if dest == nil then return E.unrouted(o.i .. " (no stage to deliver to)") end
  local member = dest == o.s and o.n or nil
  local targets = E.stage_by_id(dest)
  if dest ~= o.s and CLUSTER ~= nil and #targets == 0 and not (MULTI and #E.processes_of(dest) > 0) then
    -- A callback naming another stage that this node does not run: one member of another
    -- node that does, as `route` would choose.
    member = E.cluster_pick(dest)
    if member == nil then return E.unrouted(o.i) end
    if member == false then
      -- Who hosts it is being learned: the message waits for that (1.25 periods).
      local rn = o.rn or (o.rp and member_of(o.rp)) or CLUSTER
      E.cluster_hold(dest, false, E.encode({ i = o.i, r = o.r, rp = o.rp or ME, rn = rn, v = o.v, k = o.k }))
      return
    end
  end
  if member ~= nil then
    -- The addressee runs on another node (`member`): straight there, like a reply. Replies
    -- go to the reply stage's member, which is this one unless `o.rn` says otherwise.
    if CLUSTER == nil then return E.unrouted(o.i .. " (an output for another node)") end
    local rn = o.rn or (o.rp and member_of(o.rp)) or CLUSTER
    E.cluster_send(member, dest, false, E.encode({ i = o.i, r = o.r, rp = o.rp or ME, rn = rn, v = o.v, k = o.k }))
    return
  end
  if MULTI then
    local p = o.p
    if dest ~= o.s then p = E.pick_process(dest, #targets > 0) end
    if p == nil then return E.unrouted(o.i) end
    if p ~= ME then
      E.send_process(p, dest, false, E.encode({ i = o.i, r = o.r, rp = o.rp or ME, rn = o.rn, v = o.v, k = o.k }))
      return
    end
  end
  if #targets == 0 then return E.unrouted(o.i) end
  post_to_stage({ t = targets[1], i = o.i, r = o.r, rp = o.rp, rn = o.rn, v = o.v, k = o.k })
end

local timed_call = { ticket = E.ticket_call, route = E.route_call }

local function send_service_outputs(what, ok, outs)
  if not ok then
    E.log("warn", what .. ": " .. tostring(outs))
    return
  end
  for _, o in ipairs(outs) do send_service_output(o) end
end

-- A `=ticket` / `=route` stage's timer fired (armed by the engine at the service's next
-- deadline): run what is due and send what it says.
P.posts.svc_tick = function(m)
  send_service_outputs("service tick", pcall(E.service_tick, m.t, m.g))
end

-- A curl.so request finished (script/services/http.rs): answer the sender, if it asked.
P.posts.http_done = function(m)
  local reply, env = E.http_reply(m.h)
  if reply == nil then return end
  env = E.decode(env)
  if env.i == nil then return end
  reply.extra = env.x
  send_reply(env.r, env.rp, env.i, pack(reply), nil, env.rn)
end

-- The results of one part of a batch split over cores (`split_batch`); the last part to
-- arrive sends the one reply.
P.posts.gather = function(m)
  local g = gathers[m.g]
  if g == nil then return end
  if m.i ~= nil then g.i = m.i end
  if type(m.v) == "table" then
    for k, v in pairs(m.v) do g.out[k] = v end
  end
  g.left = g.left - 1
  if g.left > 0 then return end
  gathers[m.g] = nil
  if g.i ~= nil then send_reply(g.r, g.rp, g.i, pack(g.out), nil, g.rn) end
end

-- index.so requests whose answer waits for a sync, by the handle `E.index_call` gave.
local index_held = {}

-- An index.so answer goes out: to the core gathering a split batch, or to the sender.
local function index_answer(m, id, ok, ret, value)
  if m.g ~= nil then
    -- One part of a split batch: its results go to the core gathering the reply.
    if not ok then E.log("warn", "index `" .. tostring(id) .. "`: " .. tostring(ret)) end
    E.post(m.gc, "gather", E.encode({ g = m.g, i = ok and ret or nil, v = ok and value or nil }))
    return
  end
  if not ok then
    E.log("warn", "index `" .. tostring(id) .. "`: " .. tostring(ret))
  elseif ret ~= nil and m.r ~= nil then
    send_reply(m.r, m.rp, ret, pack(value), nil, m.rn)
  end
end

-- Held index.so answers released by the engine go out, in the order they were produced.
local function index_release(released)
  for _, a in ipairs(released) do
    local req = index_held[a.h]
    index_held[a.h] = nil
    if req ~= nil then index_answer(req, req.i, true, a.i, a.v) end
  end
end

-- An index.so sync thread has this core's log writes on disk up to `u` (`f`: indexes that
-- failed): the answers that waited go out, in the order they were produced.
P.posts.index_done = function(m)
  index_release(E.index_done(m.t, m.u, m.f))
end

-- An index.so open thread finished opening an index of this core's shard: the requests that
-- waited for it run, in arrival order (their answers go out now or after their sync).
P.posts.index_open = function(m)
  index_release(E.index_opened(m.t))
end

-- A routed message reached the core that handles it (for a Lua stage, its main core).
P.posts.msg = function(m, payload)
  if m.d ~= nil and E.wall_ms() > m.d then return end -- past its deadline
  local stage = m.t
  local service = service_of[stage]
  if service then
    -- A message from another process arrives at the stage's main core: pass it on to the
    -- shard that owns what it names (a batch is split). Everything of one sender takes that
    -- same way, so its messages stay in order.
    if not m.b then
      local core = E.stage_core(stage, m.i)
      if core == nil then return split_batch(m) end
      if core ~= E.core() then return E.post(core, "msg", payload) end
    end
    -- A service stage: the engine runs the request on this core, its owner, and says what to
    -- answer; the answer takes the same way back as a handler's return values.
    local id = m.i
    local own = stage_ids[stage] .. ":"
    if id:sub(1, #own) == own then id = id:sub(#own + 1) end
    if service == "lotus" then
      E.log("warn", "lotus stage `" .. stage_ids[stage] .. "` takes no stage messages (`" .. tostring(id)
        .. "` dropped): talk to it over its `listen` or `compat` address")
      return
    end
    if service == "curl" then
      -- `<callback>` or `<request_id>=<callback>`; no callback (or no reply stage): the
      -- request runs, nobody is answered (spec services.md §5.2).
      local cb = id:match("=(.*)$") or id
      local req = m.v and m.v[1]
      local env = { r = m.r, rp = m.rp, rn = m.rn, x = type(req) == "table" and req.extra or nil }
      if cb ~= "" and m.r ~= nil then env.i = cb end
      local ok, err = pcall(E.http_call, stage, req, m.d, E.encode(env))
      if not ok then E.log("warn", "curl `" .. id .. "`: " .. tostring(err)) end
      return
    end
    local call = timed_call[service]
    if call ~= nil then
      -- `=ticket` / `=route`: the sender's address is its stage and process (a reply, such
      -- as a claim or a lease extension, names its sender in `f`/`fp` instead), and its
      -- cluster member when it runs on another node.
      local from, fp, member = m.r, m.rp, m.rn
      if from == nil then from, fp = m.f, m.fp end
      if member ~= nil and on_this_node(member) then member = nil end
      send_service_outputs(service .. " `" .. id .. "`", pcall(call, stage, id, m.v, from or "", fp or ME, member))
      return
    end
    local ok, ret, value = pcall(E.index_call, stage, id, m.v)
    if ok and ret == false then
      -- Held until the index is open (`index_open`) and its sync thread has the log on
      -- disk (`index_done`).
      index_held[value] = m
      return
    end
    return index_answer(m, id, ok, ret, value)
  end
  local env = P.stage_env[stage]
  if env == nil then
    E.unrouted(tostring(m.i) .. " (stage not running on this core)")
    return
  end
  local id = m.i
  local own = stage_ids[stage] .. ":"
  if id:sub(1, #own) == own then id = id:sub(#own + 1) end
  local matched, serial, code, stored = E.waitfor_find(stage, (id:match("^([^=]*)")))
  if matched == nil then
    E.unrouted(stage_ids[stage] .. ":" .. id .. " (no handler)")
    return
  end
  local f = handler_function(stage, matched, serial, code)
  invoke(stage, env, f, { [0] = id, [-1] = matched, [1] = m.rp, [2] = m.r, [3] = m.rn }, stored, m.v, m.k)
end

-- Between processes: `*` goes to every eligible process hosting the group (and to the stages
-- here), anything else to one process, round-robin over the eligible ones (this one included
-- when it hosts the group). Remote sends go first, so a message too large for a datagram
-- raises before anything was delivered. Returns whether this node had a receiver.
local function route_processes(targets, group, policy, id, reply_to, deadline, values)
  if policy == "*" then
    local procs = E.processes_of(group)
    if #procs > 0 then
      local payload = E.encode({ i = id, r = reply_to, rp = ME, d = deadline, v = values })
      for _, n in ipairs(procs) do E.send_process(n, group, true, payload) end
    elseif #targets == 0 then
      return false
    end
    post_local(targets, true, id, reply_to, deadline, values)
    return true
  end
  local n = E.pick_process(group, #targets > 0)
  if n == nil then return false end
  if n == ME then
    post_local(targets, false, id, reply_to, deadline, values)
    return true
  end
  E.send_process(n, group, false, E.encode({ i = id, r = reply_to, rp = ME, d = deadline, v = values }))
  return true
end

-- Between nodes (engine/src/cluster): `every` sends to each eligible member of another node
-- hosting the group, else to one, round-robin. The request names this member in `rn`, so
-- replies come straight back here. Returns whether a member was chosen (a send that fails
-- is counted as unrouted by `E.cluster_send`). Until this member has heard who hosts the
-- group (the first message to it starts listening), the pick answers `false` and the
-- message is held for a heartbeat period and a quarter, then routed the same way
-- (`E.cluster_hold`; engine/src/cluster).
local function route_cluster(group, every, id, reply_to, deadline, values)
  if CLUSTER == nil then return false end
  local payload = nil
  local function envelope()
    payload = payload or E.encode({ i = id, r = reply_to, rp = ME, rn = CLUSTER, d = deadline, v = values })
    return payload
  end
  if every then
    local members = E.cluster_members(group)
    if members == false then return E.cluster_hold(group, true, envelope()) end
    for _, member in ipairs(members) do E.cluster_send(member, group, true, envelope()) end
    return #members > 0
  end
  local member = E.cluster_pick(group)
  if member == nil then return false end
  if member == false then return E.cluster_hold(group, false, envelope()) end
  E.cluster_send(member, group, false, envelope())
  return true
end

-- Posts message `id` with `values` to the stages of group `group` (policy: "" one, "*" all,
-- "=" this node, "+" other nodes), replies going to stage `reply_to`. The one place where a
-- message's receivers are chosen. One receiver ("") is on this node whenever this node has
-- an eligible one (no network hop it does not need), else a member of another node.
-- The policy's name in the metrics (`P.routed` / `P.unrouted`, core.lua).
local POLICY_NAMES = { [""] = "one", ["*"] = "all", ["="] = "node", ["+"] = "remote" }

local function count_route(policy, ok)
  local counts = ok and P.routed or P.unrouted
  local name = POLICY_NAMES[policy] or "one"
  counts[name] = counts[name] + 1
end

route = function(group, policy, id, reply_to, deadline, values)
  if policy == "+" then
    local ok = route_cluster(group, false, id, reply_to, deadline, values)
    count_route(policy, ok)
    if not ok then
      E.unrouted(group .. ":" .. id)
    end
    return
  end
  local targets = E.stage_by_id(group)
  local here
  if MULTI then
    here = route_processes(targets, group, policy, id, reply_to, deadline, values)
  else
    here = #targets > 0
    if here then post_local(targets, policy == "*", id, reply_to, deadline, values) end
  end
  local remote = false
  if policy == "*" or (policy == "" and not here) then
    remote = route_cluster(group, policy == "*", id, reply_to, deadline, values)
  end
  count_route(policy, here or remote)
  if not here and not remote then E.unrouted(group .. ":" .. id) end
end

-- Runs the current stage's handler for `msg` now, on this core (`stage.signal(":msg", ...)`).
local function call_now(stage, msg, env, values)
  local matched, serial, code, stored = E.waitfor_find(stage, (msg:match("^([^=]*)")))
  if matched == nil then
    E.unrouted(stage_ids[stage] .. ":" .. msg .. " (no handler)")
    return
  end
  invoke(stage, env, handler_function(stage, matched, serial, code), { [0] = msg, [-1] = matched }, stored, values)
end

-- Locks (spec §10.5) -------------------------------------------------------------------------

local function grant(key, payload, generation, lease)
  if payload == nil then return end
  local m = E.decode(payload)
  -- Locks belong to this process: the grant goes to the requesting stage here.
  deliver_here(m.g, m.cb, nil, nil, m.v)
  E.later(lease, "lease", E.encode({ k = key, g = generation }))
end

P.posts.lease = function(m)
  local what, a, b, c = E.lock_check(m.k, m.g)
  if what == "grant" then grant(m.k, a, b, c)
  elseif what == "later" then E.later(a, "lease", E.encode(m)) end
end

-- A node-wide lock of a multi-process node granted by the supervisor (core::lock_service).
P.posts.lock_grant = function(m)
  deliver_here(m.g, m.cb, nil, nil, m.v)
end

local function lock(S, op, rest, values)
  local name, tail = rest:match("^([^.]*)%.?(.*)$")
  local key = S .. ">" .. name
  if MULTI then
    -- Scoped to the node (spec §10.5): the supervisor holds the locks and their leases.
    if op == ">" then return E.lock_remote(op, key, E.encode({ g = S, cb = tail, v = values })) end
    if op == ">>" then return E.lock_remote(op, key, tonumber(values[1]) or 0) end
    return E.lock_remote(op, key)
  end
  if op == ">" then
    grant(key, E.lock_acquire(key, E.encode({ g = S, cb = tail, v = values })))
  elseif op == ">>" then
    local generation, left = E.lock_extend(key, tonumber(values[1]) or 0)
    if generation ~= nil then E.later(left, "lease", E.encode({ k = key, g = generation })) end
  else
    grant(key, E.lock_release(key))
  end
end

-- stage.signal -------------------------------------------------------------------------------

local function each_group(list, f)
  for g in list:gmatch("[^,]+") do f(g) end
end

local function multi(groups, policy, reply_to, deadline, tbl)
  if type(tbl) ~= "table" then error("stage.signal: a multi-message needs a table of messages", 4) end
  each_group(groups, function(g)
    for k, v in pairs(tbl) do
      if type(k) == "string" then route(g, policy, g .. ":" .. k, reply_to, deadline, pack(v)) end
    end
  end)
end

local function send(target, deadline, env, ...)
  local s = current_stage(3)
  local S = stage_ids[s]
  local values = pack(...)
  if target == "" then return multi(S, "", nil, deadline, (...)) end
  local colon = target:find(":", 1, true)
  if colon then
    local head, R = target:sub(1, colon - 1), target:sub(colon + 1)
    local policy, groups = head:match("^([*=+]*)(.*)$")
    if R == "" then
      -- A table is a multi-message; anything else is one message with an empty id
      -- (`stage.signal("curl:", url)`: a request nobody is answered for, services.md §5.2).
      if type((...)) == "table" then return multi(groups, policy, S, deadline, (...)) end
      each_group(groups, function(g) route(g, policy, g .. ":", S, deadline, values) end)
      return
    end
    if R:find("^[><]") then
      error("stage.signal: locks on behalf of another stage (`stage:>L`) are not supported", 3)
    end
    if groups == "" then
      if policy == "" then return call_now(s, R, env, values) end
      return route(S, policy, S .. ":" .. R, S, deadline, values)
    end
    each_group(groups, function(g) route(g, policy, g .. ":" .. R, S, deadline, values) end)
    return
  end
  local first = target:sub(1, 1)
  if first == "@" then return route(S, "", S .. ":" .. target:sub(2), S, deadline, values) end
  if target:sub(1, 2) == ">>" then return lock(S, ">>", target:sub(3), values) end
  if first == ">" or first == "<" then return lock(S, first, target:sub(2), values) end
  local policy, rest = target:match("^([*=+]*)(.*)$")
  local plus = rest:find("+", 1, true)
  if plus then
    local T = rest:sub(1, plus - 1)
    return route(T, policy, T .. ":" .. S .. ":" .. rest:sub(plus + 1), S, deadline, values)
  end
  route(S, policy, S .. ":" .. rest, S, deadline, values)
end

function stage.signal(target, ...)
  if target == nil then
    local w = P.waitfor
    if w == nil then error("stage.waitfor() not a callback function.", 2) end
    return reply(w, ...)
  end
  if type(target) == "table" then
    if target[0] ~= nil then return reply(target, ...) end -- a saved _WAITFOR
    local id, deadline = target[1], nil
    for i = 2, 3 do
      local x = target[i]
      if type(x) == "number" then deadline = E.wall_ms() + x
      elseif type(x) == "string" then error("stage.signal: explicit addresses are not supported yet in this build", 2) end
    end
    if type(id) ~= "string" then error("stage.signal: target table needs a message id at [1]", 2) end
    return send(id, deadline, getfenv(2), ...)
  end
  if type(target) ~= "string" then error("stage.signal: bad target (" .. type(target) .. ")", 2) end
  return send(target, nil, getfenv(2), ...)
end

-- stage.waitfor ------------------------------------------------------------------------------

local function register(s, id, f, ...)
  E.waitfor_set(s, id, P.dump(f, "stage.waitfor handler"), encode_values(...))
  return id
end

function stage.waitfor(...)
  local n = select("#", ...)
  local s = current_stage(2)
  if n == 0 then
    local out = {}
    for id, args in pairs(E.waitfor_list(s)) do
      if args then out[id] = stored_value(args) end
    end
    return out
  end
  local a, b = ...
  if type(a) == "function" then return register(s, E.waitfor_fresh(s, 16), a, select(2, ...)) end
  if type(a) == "number" and type(b) == "function" then
    return register(s, E.waitfor_fresh(s, a), b, select(3, ...))
  end
  if type(a) ~= "string" then error("stage.waitfor: expected an id or a function, got " .. type(a), 2) end
  if n == 1 then
    local matched, _, code, stored = E.waitfor_get(s, a)
    if matched == nil then return end
    local f = P.undump(code, "=waitfor " .. a)
    setfenv(f, getfenv(2))
    return f, stored_value(stored)
  end
  if b == nil and n == 2 then
    E.waitfor_del(s, a)
    return nil
  end
  if type(b) == "function" then return register(s, a, b, select(3, ...)) end
  E.waitfor_args(s, a, encode_values(select(2, ...)))
  return b
end

-- stage.addtask ------------------------------------------------------------------------------

local MAX_TASKS = 2048
local tasks, task_count, task_seq = {}, 0, 0 -- tasks of stages whose main core is this one

local function schedule(handle, t, delay)
  t.gen = t.gen + 1
  E.later(delay, "task", E.encode({ h = handle, g = t.gen }))
end

local function add_task(s, handle, delay, code, args)
  if task_count >= MAX_TASKS then
    E.log("warn", "stage.addtask: more than " .. MAX_TASKS .. " timers on this core; task dropped")
    return
  end
  local t = { s = s, f = P.undump(code, "=addtask"), args = args, interval = delay > 0 and delay or 0, gen = 0 }
  tasks[handle] = t
  task_count = task_count + 1
  schedule(handle, t, delay < 0 and -delay or delay)
end

local function remove_task(handle)
  if tasks[handle] ~= nil then
    tasks[handle] = nil
    task_count = task_count - 1
    return true
  end
  return false
end

P.posts.task = function(m)
  local t = tasks[m.h]
  if t == nil or t.gen ~= m.g then return end -- cancelled or rescheduled
  local env = P.stage_env[t.s]
  setfenv(t.f, env)
  P.stage, P.waitfor = t.s, nil
  local ok, n = P.try("addtask function", call_with, t.f, t.args, nil)
  if tasks[m.h] ~= t then return end -- the task cancelled or replaced itself
  if ok and type(n) == "number" then
    if n > 0 then t.interval = n else return remove_task(m.h) end
  elseif t.interval <= 0 then
    return remove_task(m.h)
  end
  schedule(m.h, t, t.interval)
end

-- Handle operations sent from another core.
P.posts.taskop = function(m)
  P.task_op(m.h, m.n, m.f)
end

P.posts.addtask = function(m)
  add_task(m.s, m.h, m.d, m.c, m.a)
end

local function stage_of_handle(handle)
  local core, s = handle:match("%[(%x+),(%x+)%]$")
  if core == nil then return nil end
  return tonumber(s, 16), tonumber(core, 16)
end

function P.task_op(handle, n, g)
  local t = tasks[handle]
  if t == nil then return false end
  if n == nil and g == nil then return remove_task(handle) end
  if g ~= nil then t.f = type(g) == "function" and g or P.undump(g, "=addtask") end
  if type(n) == "number" then
    t.interval = n
    if n > 0 then schedule(handle, t, n) end
  end
  return true
end

function stage.addtask(a, ...)
  if type(a) == "string" then
    if not a:find("^task: ") then error("Not a task object", 2) end
    local s, main = stage_of_handle(a)
    if s == nil then error("Not a task object", 2) end
    if s ~= current_stage(2) then error("stage.addtask: the task belongs to another stage", 2) end
    local n, g = ...
    if type(n) == "function" then n, g = nil, n end
    if main == E.core() then return P.task_op(a, n, g) end
    E.post(main, "taskop", E.encode({ h = a, n = n, f = g }))
    return true
  end
  local delay, f, first = 0, a, 2
  if type(a) == "number" then delay, f, first = a, (...), 3 end
  if type(f) ~= "function" then error("stage.addtask: expected a function", 2) end
  local s = current_stage(2)
  local _, main = E.stage_info(s)
  task_seq = task_seq + 1
  local handle = ("task: %x[%x,%x]"):format(task_seq * 256 + E.core(), main, s)
  local code, args = P.dump(f, "stage.addtask function"), encode_values(select(first - 1, ...))
  if main == E.core() then
    add_task(s, handle, delay, code, args)
  else
    E.post(main, "addtask", E.encode({ s = s, h = handle, d = delay, c = code, a = args }))
  end
  return handle
end

-- stage.call / stage.once / stage.submit ------------------------------------------------------

function stage.call(f, ...)
  local args, n = {}, 0
  local function add(v) n = n + 1; args[n] = v end
  if type(f) == "string" then
    f = stage.load(f)
  elseif type(f) == "table" then
    local fn
    for _, v in pairs(f) do if fn == nil then fn = v else add(v) end end
    f = fn
  end
  if type(f) ~= "function" then return end
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "table" then
      for _, x in pairs(v) do add(x) end
    else
      add(v)
    end
  end
  return f(unpack(args, 1, n))
end

function stage.once(key, f)
  if type(key) ~= "string" then key = "" end
  if f == nil then return E.once_forget(key) end
  if E.once(key) then f() end
end

P.posts.job = function(m, payload)
  local f = m.f
  if type(f) == "string" then f = stage.load(f) end
  if type(f) ~= "function" then
    E.log("warn", "stage.submit: `" .. tostring(m.f) .. "` is not a function")
    return
  end
  P.stage, P.waitfor = m.s, nil
  local ok, n = P.try("submitted job", f, unpack_values(m.v))
  if ok and type(n) == "number" and n > 0 then E.later(n, "job", payload) end
end

function stage.submit(a, ...)
  local id, f, first = 0, a, 1
  if type(a) == "number" then id, f, first = a, (...), 2 end
  if type(f) ~= "function" and type(f) ~= "string" then error("Unsupported data types", 2) end
  -- Jobs with one non-zero id all run on one core, so they never overlap and keep their order.
  local core = id == 0 and E.next_core() or (id % E.cores())
  E.post(core, "job", E.encode({ f = f, s = P.stage, v = pack(select(first, ...)) }))
end
