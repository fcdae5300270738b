-- v1/start.lua
-- 외부 연결을 준비 (필요에 따라 수정할수 있습니다.)
local sp = broker.ready("tcp://0.0.0.0:8081?packet=4k,10k", function (socket, addr)

    -- 데이터를 받으면 호출되는 함수를 등록한다.
    return function (socket, data, addr)

        stage.load("packet+" .. data.message, function (f)
            local v = f(socket, data)
            if v ~= nil then
                socket.commit(v, addr);
            end
        end)
        
    end
end);

sp.expire = 3000; -- 3초 동안 데이터 발생이 없으면 닫기
sp.close = function (socket)

    -- 클라이언트 접속이 해제될때 호출된다.
    stage.load("packet+__close", function (f)
        f(socket);
    end)
end


log4cxx.out("READY")
return function () -- IDLE 함수 등록
    return 1000; -- 다음 호출 시간 예약 (0 또는 반환이 없는 경우 중지)
end;
