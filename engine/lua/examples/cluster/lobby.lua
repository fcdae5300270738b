-- Node a's stage `lobby`: once a second it asks stage `game`, which only node b runs, and
-- logs the answer. The same call reaches `game` in this process, in another process of this
-- node or on another node: where it runs is the cluster's business, not the script's.
-- Handlers and tasks see globals, never upvalues (they are re-created from bytecode).
stage.waitfor("answer", function (pid, n)
  logger.info("game (pid " .. tostring(pid) .. ") answered ping " .. tostring(n))
end)

stage.addtask(1000, function ()
  PINGS = (PINGS or 0) + 1
  -- Unanswered within 500 ms (b not started yet, or gone): dropped, and the next ping tries again.
  stage.signal({ "game:ping=answer", 500 }, PINGS)
end)
