-- lobby.lua: the lobby's rules, shared by packet.lua's handlers (which run on the core that
-- owns the client's connection) and start.lua's message handlers (which run on the stage's
-- main core when =ticket or index.so answer). Loaded with stage.require, once per Lua state.
--
-- Everything a second core must see lives in the process-wide store `__` (plain data, copied
-- in and out); a room's seats are the tickets of its =ticket category `room.<name>` (a
-- negative limit: a full room refuses), so the ticket service, not this script, decides who
-- gets the last seat when two players race for it.
--
--   __["p" .. id]     a logged-in connection: { name, room, lease, joining, joining_for }
--   __["n:" .. name]  the connection id holding a player name (the latest login)
--   __["r:" .. room]  a room: { size, members = { { id, name, ready, lease }, ... } }
--   __.rooms          { [room] = size }: the room list (rooms stay once created)
--   __["s:" .. name]  a player's leaderboard total, read from index.so at login

local P = stage.require("lobby_packets")

local L = {}

-- A seat is held until the player leaves (the lease is released then); 24 h is "for the
-- session" for a lobby, and an abandoned lease still ends on its own.
L.HOLD_MS = 24 * 3600 * 1000
-- A round starts when every member is ready and there are at least this many.
L.MIN_PLAYERS = 2
-- The index.so stage and index of the leaderboard (stage.json: "index.so+rank").
L.RANK = "rank"
L.BOARD = "lobby"

local function err(code, request)
  return P.error.new({ code = code, ["for"] = request })
end
L.err = err

-- Sends `msg` (a table, checked by its schema constructor first) to connections `ids` on
-- any core.
local function send(ids, msg)
  if #ids > 0 then broker.signal(ids, msg) end
end

local function names_and_ids(members, except)
  local names, ids = {}, {}
  for i = 1, #members do
    local m = members[i]
    names[#names + 1] = m.name
    if m.id ~= except then ids[#ids + 1] = m.id end
  end
  return names, ids
end

-- Tells the other members that `name` joined, left or readied up.
local function notify(room, members, me, name, change)
  local _, others = names_and_ids(members, me)
  send(others, P.member.new({ room = room, name = name, change = change }))
end

-- When every member is ready (and there are enough), the round starts: everyone gets
-- `start` and the ready flags reset for the next round. Runs inside a room update.
local function maybe_start(r)
  if #r.members < L.MIN_PLAYERS then return nil end
  for i = 1, #r.members do
    if not r.members[i].ready then return nil end
  end
  for i = 1, #r.members do r.members[i].ready = false end
  local names, ids = names_and_ids(r.members, nil)
  return { names = names, ids = ids }
end

local function start_round(room, round)
  if round then send(round.ids, P.start.new({ room = room, players = round.names })) end
end

function L.player(id)
  local p = __["p" .. id]
  if p == nil or p.gone then return nil end
  return p
end

-- One connection per name: a second login with the same name takes over (a player who
-- reconnects before the server noticed the old connection drop is not locked out); the
-- older connection leaves its room at once and is closed.
--
-- The welcome waits for index.so: the player's leaderboard total is read from there (it
-- outlives the process) into `__["s:" .. name]`, which `score` then adds to.
function L.login(id, name)
  if L.player(id) then return err("already_logged_in", "login") end
  local previous
  __("n:" .. name, function (holder)
    previous = holder
    return id
  end)
  if previous ~= nil and previous ~= id then
    -- The old connection leaves its room now, not when its close is processed: its seat is
    -- free before this player, whose requests come from this core after it, asks for one.
    L.gone(previous)
    broker.close(previous)
  end
  __["p" .. id] = { name = name }
  stage.signal(L.RANK .. ":get?" .. L.BOARD .. "=welcome." .. id, name)
  return nil
end

-- start.lua's `welcome.<id>` handler: index.so's answer to the login's get,
-- { [name] = { I = { { i = score, d = rank } } } } (an empty table for a new name).
function L.welcome(id, found)
  local p = L.player(id)
  if not p then return end -- closed meanwhile
  local entry = found and found[p.name]
  local scores = type(entry) == "table" and entry.I
  local total = type(scores) == "table" and scores[1] and scores[1].i or 0
  -- Set only when absent: a total already here (an earlier login of this process run) is
  -- at least as new as the index's, which may still be on its way.
  __("s:" .. p.name, function (t) if t == nil then return total end end)
  send({ id }, P.welcome.new({ id = id, name = p.name }))
end

function L.list_rooms()
  local index = __.rooms or {}
  local names = {}
  for name in pairs(index) do names[#names + 1] = name end
  table.sort(names)
  local rooms = {}
  for i = 1, math.min(#names, 1000) do
    local r = __["r:" .. names[i]]
    if r then rooms[#rooms + 1] = { name = names[i], size = r.size, members = #r.members } end
  end
  return { rooms = rooms }
end

local function good_room_name(room)
  return room:find("^[%w_%-]+$") ~= nil
end

-- Asks =ticket for a seat in `room`. The answer comes to start.lua's `granted` handler (a
-- seat) or its `refused.<id>` handler (feedback `false`: the room is full).
--
-- The category is (re)declared first, from this same core: `ticket:@room.<name>` with a
-- negative limit (|size| seats, a request beyond them is refused, not queued) creates it or
-- leaves it as it is. Messages from one core reach the ticket shard in the order they were
-- sent, so the request never arrives before its category, whichever core created the room.
local function ask_seat(id, p, room, size, request)
  local ok = false
  __("p" .. id, function (r)
    if r == nil or r.gone or r.room or r.joining then return nil end
    r.joining, r.joining_for = room, request
    ok = true
    return r
  end)
  if not ok then return err("already_in_room", request) end
  stage.signal("ticket:@room." .. room, -size)
  stage.signal("ticket:room." .. room .. "=granted?refused." .. id, id, p.name, room)
  return nil -- the answer is sent when the ticket service decides
end

function L.create_room(id, room, size)
  local p = L.player(id)
  if not p then return err("not_logged_in", "create_room") end
  if not good_room_name(room) then return err("bad_room_name", "create_room") end
  if p.room or p.joining then return err("already_in_room", "create_room") end
  local created = false
  __("r:" .. room, function (r)
    if r ~= nil then return nil end
    created = true
    return { size = size, members = {} }
  end)
  if not created then return err("room_exists", "create_room") end
  __("rooms", function (t)
    t = t or {}
    t[room] = size
    return t
  end)
  return ask_seat(id, p, room, size, "create_room")
end

function L.join_room(id, room)
  local p = L.player(id)
  if not p then return err("not_logged_in", "join_room") end
  if not good_room_name(room) then return err("bad_room_name", "join_room") end
  if p.room or p.joining then return err("already_in_room", "join_room") end
  local r = __["r:" .. room]
  if r == nil then return err("no_such_room", "join_room") end
  return ask_seat(id, p, room, r.size, "join_room")
end

-- start.lua's `granted` handler: =ticket gave connection `id` a seat (lease `lease`) in
-- `room`. Returns the lease time to hold it, or 0 to give it back (the player left while
-- waiting, or the answer went elsewhere).
function L.granted(id, name, room, lease)
  local p = L.player(id)
  if not p or p.joining ~= room then return 0 end
  local members, size
  __("r:" .. room, function (r)
    if r == nil then return nil end
    r.members[#r.members + 1] = { id = id, name = name, ready = false, lease = lease }
    members, size = r.members, r.size
    return r
  end)
  if not members then
    __("p" .. id, function (r) if r and not r.gone then r.joining = nil return r end end)
    send({ id }, err("no_such_room", p.joining_for))
    return 0
  end
  local seated = false
  __("p" .. id, function (r)
    if r == nil or r.gone then return nil end
    r.joining, r.joining_for, r.room, r.lease = nil, nil, room, lease
    seated = true
    return r
  end)
  if not seated then
    -- The connection closed between the two updates: take the seat back (remove_member
    -- releases the lease).
    L.remove_member(id, room)
    return nil
  end
  local names = names_and_ids(members, nil)
  send({ id }, P.joined.new({ room = room, size = size, members = names }))
  notify(room, members, id, name, "joined")
  return L.HOLD_MS
end

-- start.lua's `refused.<id>` handler: the ticket feedback for a seat request. `@lease`
-- means granted or queued (the grant comes on its own); false means refused.
function L.feedback(id, result)
  if result ~= false then return end
  local p = L.player(id)
  if not p or not p.joining then return end
  local room, request = p.joining, p.joining_for
  __("p" .. id, function (r) if r and not r.gone then r.joining, r.joining_for = nil, nil return r end end)
  send({ id }, err(__["r:" .. room] and "room_full" or "no_such_room", request))
end

-- Takes connection `id` out of `room`'s members and gives its seat back; returns the
-- remaining members and the round that this completes (everyone left is ready), if any.
-- The lease is released before the member list changes, so a player who sees the seat
-- free and asks for it (from any core) asks after the release.
function L.remove_member(id, room, lease)
  if lease then stage.signal("ticket:" .. lease, 0) end
  local left, round, held
  __("r:" .. room, function (r)
    if r == nil then return nil end
    for i = 1, #r.members do
      if r.members[i].id == id then
        held = r.members[i].lease
        table.remove(r.members, i)
        round = maybe_start(r)
        left = r.members
        return r
      end
    end
    return nil
  end)
  if held and held ~= lease then stage.signal("ticket:" .. held, 0) end
  return left, round
end

local function leave(id, p)
  local room = p.room
  local left, round = L.remove_member(id, room, p.lease)
  if left then
    notify(room, left, id, p.name, "left")
    start_round(room, round)
  end
  return room
end

function L.leave_room(id)
  local p = L.player(id)
  if not p then return err("not_logged_in", "leave_room") end
  if not p.room then return err("not_in_room", "leave_room") end
  local room = leave(id, p)
  __("p" .. id, function (r) if r and not r.gone then r.room, r.lease = nil, nil return r end end)
  return P.left.new({ room = room })
end

function L.chat(id, text)
  local p = L.player(id)
  if not p then return err("not_logged_in", "chat") end
  if not p.room then return err("not_in_room", "chat") end
  local r = __["r:" .. p.room]
  local _, others = names_and_ids(r and r.members or {}, id)
  send(others, P.said.new({ room = p.room, from = p.name, text = text }))
  return P.chat_sent.new({ delivered = #others })
end

function L.ready(id, ready)
  local p = L.player(id)
  if not p then return err("not_logged_in", "ready") end
  if not p.room then return err("not_in_room", "ready") end
  local waiting, round, members = 0, nil, nil
  __("r:" .. p.room, function (r)
    if r == nil then return nil end
    for i = 1, #r.members do
      if r.members[i].id == id then r.members[i].ready = ready end
    end
    round = ready and maybe_start(r) or nil
    for i = 1, #r.members do
      if not r.members[i].ready then waiting = waiting + 1 end
    end
    if round then waiting = 0 end
    members = r.members
    return r
  end)
  -- The reply goes first, so the last player to ready up sees ready_ok before start.
  send({ id }, P.ready_ok.new({ ready = ready, waiting = waiting }))
  if round then
    start_round(p.room, round)
  elseif members then
    notify(p.room, members, id, p.name, "ready")
  end
  return nil
end

-- Adds the points to the player's total and sets that total in index.so; the rank comes
-- back to start.lua's `scored.<id>.<total>` handler.
function L.score(id, points)
  local p = L.player(id)
  if not p then return err("not_logged_in", "score") end
  local total = __("s:" .. p.name, function (t) return (t or 0) + points end)
  stage.signal(L.RANK .. ":set?" .. L.BOARD .. "=scored." .. id .. "." .. total,
    { [p.name] = { i = total } })
  return nil
end

function L.scored(id, total, ranks)
  local rank
  for _, d in pairs(ranks or {}) do rank = d end
  if type(rank) ~= "number" or rank < 1 then
    -- index.so could not store it (it logs why): say so rather than invent a rank.
    logger.warn("leaderboard set for connection " .. id .. " answered " .. tostring(rank))
    return
  end
  send({ id }, P.scored.new({ total = total, rank = rank }))
end

function L.leaderboard(id, count)
  if not L.player(id) then return err("not_logged_in", "leaderboard") end
  stage.signal(L.RANK .. ":forEach?" .. L.BOARD .. "=top." .. id, { 1, count })
  return nil
end

function L.top(id, entries)
  local list = {}
  for _, e in pairs(entries or {}) do
    if type(e) == "table" and e.k then
      list[#list + 1] = { rank = e.d, name = e.k, score = e.i }
    end
  end
  table.sort(list, function (a, b) return a.rank < b.rank end)
  send({ id }, P.top.new({ entries = list }))
end

-- The connection closed: leave the room (or let a pending seat go) and free the name.
function L.gone(id)
  local old
  __("p" .. id, function (r)
    old = r
    if r ~= nil then return { gone = true } end
  end)
  if old and not old.gone then
    -- Only this connection's login wrote this name (login refuses a taken one). It is free
    -- before the room hears that the player left.
    if __["n:" .. old.name] == id then __["n:" .. old.name] = nil end
    if old.room then leave(id, old) end
  end
  __["p" .. id] = nil
end

return L
