-- The "Hello World" server of the original STAGE README (seed 004), as written: it answers
-- every read with "Hello World\n". Run it with `stage -c lua/examples/hello/stage.json`.
local server = broker.ready("tcp://[::]:8081", function (socket, addr)
    print("accept client: " .. broker.ntoa(addr)) 
    return true
end)

server.close = function (socket)   
    print("close client: " .. broker.ntoa(socket[1]))
end

socket.receive = function (socket, data, addr)
   socket.commit("Hello World\n")
end 
