-- bots.lua (shipped as loadtest/examples/bots.lua): log in, then echo until 100 replies
function on_connect(bot)                 -- once, after the TCP connect
  bot.state.n = 0                        -- bot.state: a table of your own, per bot
  bot.mark()                             -- start a latency measurement...
  bot.send({message = "login", user = "bot-" .. bot.id})   -- bot.id: 1..N
end

function on_message(bot, msg)            -- every message from the server
  -- msg: packet framing -> the decoded "v" table; text -> the line (with its "\n"); raw -> bytes
  -- ...which the next received message completes (the script decides what a round trip is)
  bot.state.n = bot.state.n + 1
  if bot.state.n > 100 then return bot.close() end
  bot.mark()
  bot.send({message = "echo", n = bot.state.n})
end

function on_tick(bot)                    -- optional: every --tick (default 1s)
  bot.send({message = "heartbeat"})
end
