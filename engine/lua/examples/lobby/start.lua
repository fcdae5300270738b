-- start.lua: the lobby example's main script (engine/lua/examples/lobby/, README "The lobby
-- example"). Run it from the repository root with
--     stage -c engine/lua/examples/lobby/stage.json
-- Every packet is checked against lobby.packets by the generated lobby_packets.lua before a
-- handler of packet.lua sees it; a packet that fails gets
--     {"message": "error", "code": "bad_packet", "for": ..., "field": ..., "reason": ...}
-- and the connection stays open.
local lobby = broker.ready("tcp://127.0.0.1:8090?packet=4k,64k", function (socket, addr)
    return function (socket, data, addr)
        stage.require("lobby_packets").receive(socket, data, addr)
    end
end)

lobby.close = function (socket)
    stage.require("lobby").gone(socket.id)
end

logger.info("lobby listening on 127.0.0.1:8090")

-- Messages from the services, handled on this stage's main core (lobby.lua has the rules).
-- The connection id rides in the callback name (`refused.<id>`), since a ticket feedback or
-- an index.so answer carries only the service's result.
return {
    -- =ticket granted a seat; the return value holds the lease (or gives it back with 0).
    granted = function (id, name, room)
        return stage.require("lobby").granted(id, name, room, _TICKET)
    end,
    -- =ticket's feedback on a seat request: false when the room is full (or gone).
    ["refused."] = function (key, result)
        local id = tonumber(_WAITFOR[0]:match("^refused%.(%d+)"))
        stage.require("lobby").feedback(id, result)
    end,
    -- index.so's answer to the login's get: the player's total so far.
    ["welcome."] = function (found)
        local id = tonumber(_WAITFOR[0]:match("^welcome%.(%d+)"))
        stage.require("lobby").welcome(id, found)
    end,
    -- index.so's answer to a set: { [name] = rank }.
    ["scored."] = function (ranks)
        local id, total = _WAITFOR[0]:match("^scored%.(%d+)%.(%d+)")
        stage.require("lobby").scored(tonumber(id), tonumber(total), ranks)
    end,
    -- index.so's answer to forEach: { [n] = { i = score, k = name, d = rank } }.
    ["top."] = function (entries)
        local id = tonumber(_WAITFOR[0]:match("^top%.(%d+)"))
        stage.require("lobby").top(id, entries)
    end,
}
