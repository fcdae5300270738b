-- Node b's stage `game`: answers every ping with this process's pid and the ping's number.
stage.waitfor("ping", function (n)
  return process.id, n
end)
