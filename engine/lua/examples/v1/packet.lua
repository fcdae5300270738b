-- v1/packet.lua
-- Packet handlers of the seed's v1 example, keyed by `data.message`. start.lua runs
-- `stage.load("packet+" .. data.message, ...)` for every packet, so editing this file
-- changes the running server (picked up within `%reflush` msec).

return {
    ["login"] = function (socket, data)
        -- Answer the client: socket.commit sends this table as the BSON document {"v": {...}}.
        -- `rid` is the client's request id (clients/typescript matches replies by it).
        return { message = "login", result = "ok", user = data.user, socket = socket.id, rid = data.rid }
    end,

    -- What stage-loadtest's `echo` and `login-then-echo` scenarios send (loadtest/README.md):
    -- the packet comes back as it came, so a bot can check every field of its reply.
    ["echo"] = function (socket, data)
        return data
    end,

    -- A keep-alive (the load tester's bots.lua sends one every tick): it proves the client is
    -- there, which is all `sp.expire` needs, so it gets no answer.
    ["heartbeat"] = function (socket, data)
        return nil
    end,

    -- start.lua calls this when a client disconnects.
    ["__close"] = function (socket)
        logger.info("client " .. tostring(socket.id) .. " left")
    end
}
