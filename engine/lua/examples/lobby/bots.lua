-- bots.lua: players for the lobby example, a stage-loadtest Lua scenario:
--
--   stage-loadtest --target 127.0.0.1:8090 --scenario engine/lua/examples/lobby/bots.lua \
--       --connections 50 --duration 10s --error-max 0
--
-- Bot n is player `bot-n`; bots 1-4 share room r1, 5-8 room r2, and so on. Each logs in,
-- lists the rooms, creates or joins its room, then plays rounds: chat, ready up, wait for
-- the round to start (every member ready), score, read the leaderboard, leave, join again.
-- Every message from the server is checked against lobby.packets with the generated codecs
-- (lobby_packets.lua, found next to this script): a reply that breaks the schema, or one the
-- round did not expect, raises a Lua error, which stage-loadtest counts as a `script` error.
-- A round trip is a request and its reply; messages other members cause (`said`, `member`,
-- `start`) are marked unsolicited, so they do not end a latency measurement.

local packets = require("lobby_packets")
-- Strict: a field the schema does not name is an error here, not dropped.
packets.unknown_fields = "reject"

local ROOM_SIZE = 4

local function check(msg)
  local m, e = packets.decode(msg)
  if not m then
    error("reply breaks lobby.packets: " .. tostring(e.message) .. " field '" .. e.field .. "': " .. e.reason)
  end
  if packets.messages[m.message].from ~= "server" then
    error("the server sent a client message: " .. m.message)
  end
  return m
end

-- Sends a request (built and checked by its generated constructor) and starts timing it;
-- `expect` is the reply the bot waits for.
local function request(bot, expect, name, fields)
  bot.state.expect = expect
  bot.mark()
  bot.send(packets[name].new(fields or {}))
end

local function join(bot)
  request(bot, "joined", "join_room", { room = bot.state.room })
end

local function refuse(bot, m)
  error("unexpected " .. m.message .. " while waiting for " .. tostring(bot.state.expect)
    .. (m.code and (" (" .. m.code .. " for " .. tostring(m["for"]) .. ")") or ""))
end

function on_connect(bot)
  local s = bot.state
  s.name = "bot-" .. bot.id
  s.room = "r" .. math.floor((bot.id - 1) / ROOM_SIZE + 1)
  s.total, s.rounds = 0, 0
  request(bot, "welcome", "login", { name = s.name })
end

-- What other members' actions send: checked, then left aside.
local function unsolicited(bot, m)
  local s = bot.state
  if m.message == "said" or m.message == "member" then
    -- Other members act on their own cores: their news may overtake my `joined` or trail my
    -- `left`, but it is always about my room.
    if m.room ~= s.room then refuse(bot, m) end
  elseif m.message == "start" then
    if not s.ready_sent then refuse(bot, m) end
    local me = false
    for _, p in ipairs(m.players) do me = me or p == s.name end
    if not me then error("start for a round without me: " .. table.concat(m.players, ",")) end
    s.started = true
  else
    return false
  end
  bot.unsolicited()
  return true
end

local function after_ready(bot)
  local s = bot.state
  if s.started and s.ready_ok then
    s.started, s.ready_ok, s.ready_sent = false, false, false
    s.points = math.random(1, 100)
    request(bot, "scored", "score", { points = s.points })
  end
end

function on_message(bot, msg)
  local s = bot.state
  local m = check(msg)
  if unsolicited(bot, m) then return after_ready(bot) end
  local want = s.expect
  s.expect = nil
  if m.message == "error" and want == "joined" and m.code == "no_such_room" then
    return request(bot, "joined", "create_room", { room = s.room, size = ROOM_SIZE })
  elseif m.message == "error" and want == "joined" and m.code == "room_exists" then
    return join(bot) -- another bot of the room created it first
  elseif m.message ~= want then
    s.expect = want
    return refuse(bot, m)
  end
  if want == "welcome" then
    if m.name ~= s.name then error("welcome for " .. m.name) end
    request(bot, "rooms", "list_rooms")
  elseif want == "rooms" then
    for _, r in ipairs(m.rooms) do
      if r.name == s.room then return join(bot) end
    end
    request(bot, "joined", "create_room", { room = s.room, size = ROOM_SIZE })
  elseif want == "joined" then
    if m.room ~= s.room or m.members[#m.members] ~= s.name then
      error("joined " .. m.room .. " as " .. tostring(m.members[#m.members]))
    end
    request(bot, "chat_sent", "chat", { text = "hello from " .. s.name })
  elseif want == "chat_sent" then
    s.ready_sent = true
    request(bot, "ready_ok", "ready", { ready = true })
  elseif want == "ready_ok" then
    if m.ready ~= true then error("ready_ok says not ready") end
    s.ready_ok = true
    after_ready(bot) -- the start may already be here; otherwise it comes unsolicited
  elseif want == "scored" then
    s.total = s.total + s.points
    -- Totals only grow (a server that ran bots before holds earlier points too).
    if m.total < s.total or m.rank < 1 then error("scored total " .. m.total .. " rank " .. m.rank) end
    request(bot, "top", "leaderboard", { count = 10 })
  elseif want == "top" then
    for i = 2, #m.entries do
      local a, b = m.entries[i - 1], m.entries[i]
      if a.rank >= b.rank or a.score < b.score then error("leaderboard out of order at " .. i) end
    end
    request(bot, "left", "leave_room")
  elseif want == "left" then
    if m.room ~= s.room then error("left " .. m.room) end
    s.rounds = s.rounds + 1
    join(bot)
  end
end
