-- packet.lua: the lobby's request handlers, keyed by message name. start.lua's receive
-- callback runs lobby_packets.receive, which checks each packet against lobby.packets and
-- only then calls `stage.load("packet+" .. data.message, ...)`'s handler here as
-- f(socket, data): `data` is checked, with defaults filled. What a handler returns is
-- completed and checked as the request's reply (lobby.packets `reply`) and sent; nil means
-- the answer is sent later (a =ticket seat, an index.so rank or total).
return {
    login = function (socket, data)
        return stage.require("lobby").login(socket.id, data.name)
    end,
    list_rooms = function (socket, data)
        return stage.require("lobby").list_rooms()
    end,
    create_room = function (socket, data)
        return stage.require("lobby").create_room(socket.id, data.room, data.size)
    end,
    join_room = function (socket, data)
        return stage.require("lobby").join_room(socket.id, data.room)
    end,
    leave_room = function (socket, data)
        return stage.require("lobby").leave_room(socket.id)
    end,
    chat = function (socket, data)
        return stage.require("lobby").chat(socket.id, data.text)
    end,
    ready = function (socket, data)
        return stage.require("lobby").ready(socket.id, data.ready)
    end,
    score = function (socket, data)
        return stage.require("lobby").score(socket.id, data.points)
    end,
    leaderboard = function (socket, data)
        return stage.require("lobby").leaderboard(socket.id, data.count)
    end,
}
