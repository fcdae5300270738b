//! odbc from Lua (spec/services.md §1.2) against SQLite's ODBC driver (no server needed): a
//! `thread.new` function (the blocking pool) connects through a `%odbc` name, creates,
//! inserts with inferred and typed parameters, rolls a transaction back, and reads the rows
//! back keyed by a column; on a core `odbc.new` refuses with a clear error instead of
//! blocking it.

use std::io::Write;

use crate::harness::*;

const SCRIPT: &str = r#"
broker.ready('tcp://127.0.0.1:PORT?packet=4k,4k', function ()
  return function (s, data)
    if data.message == "core" then
      local ok, err = pcall(odbc.new, "DB")
      return { ok = ok, err = tostring(err) }
    end
    if data.message == "cache" then
      local a = odbc.cache("top", function () return { x = "y" } end)
      local b = odbc.cache("top", function () error("not called: cached") end)
      b.x = "changed" -- a copy: the cache keeps its own
      local failed = odbc.cache("bad", function () error("loader boom") end)
      return {
        a = a.x, c = odbc.cache("top").x, none = odbc.cache("missing") == nil,
        failed = failed == nil, bad_kept = odbc.cache("bad") == nil,
      }
    end
    if data.message == "purge" then
      local purged = odbc.purge()
      return { purged = purged[1], n = #purged, after = odbc.cache("top") == nil }
    end
    if data.message == "cached-elsewhere" then
      -- Another Lua state (a pool thread) reads what a core cached.
      thread.new(function () return odbc.cache("top") end)
        .waitfor(function (id, t) broker.f(id).commit({ x = t and t.x }) end, s.id)
      return
    end
    thread.new(function (msg)
      local db = odbc.new("DB")
      if msg == "setup" then
        db.execute("create table users (id integer primary key, name text, level integer, score real, note text)")
        db.execute("insert into users (id, name, level, score, note) values (?, ?, ?, ?, ?)", { 1, "bob", 3, 1.5, "" })
        db.execute({ "insert into users (id, name, level, score) values (?, ?, ?, ?)", "i", "10W", "i", "d" },
                   { 2, "amy", 7, 2.25 })
        -- A transaction whose function does not return true is rolled back.
        local kept = db.begin(function (db)
          db.execute("insert into users (id, name) values (?, ?)", { 3, "temp" })
          return false
        end)
        local bad = db.execute("select nope from nowhere")
        local ok, conv = pcall(db.execute, { "insert into users (id) values (?)", "i" }, { "abc" })
        return { kept = kept, bad = bad == nil, conv = tostring(conv) }
      end
      local rs = db.execute("select id, name, level, score, note from users order by id")
      local cols = rs.columns()
      local rows = rs.fetch("id")
      return {
        bob = rows[1].name, bob_note = rows[1].note == nil, amy_level = rows[2].level,
        amy_score = rows[2].score, three = rows[3] == nil, level_type = cols.level.sqltype,
        more = rs.more, after = rs.fetch(),
      }
    end, data.message).waitfor(function (id, r) broker.f(id).commit(r) end, s.id)
  end
end)
"#;

#[test]
fn a_pool_thread_reads_and_writes_sqlite_through_odbc() {
    if !sqlite_odbc_or_skip("odbc::a_pool_thread_reads_and_writes_sqlite_through_odbc") {
        return;
    }
    let server = Server::start(
        &config(r#", "%odbc": { "DB": { "DRIVER": "SQLite3", "DATABASE": "game.db" } }"#),
        &[("start.lua", SCRIPT)],
    );
    let mut client = server.connect();
    client.write_all(&message("setup", &[])).unwrap();
    let r = read_reply(&mut client);
    assert_eq!(r.get("kept").cloned(), Some(Bson::Bool(false)), "{r:?}");
    assert_eq!(r.get("bad").cloned(), Some(Bson::Bool(true)), "{r:?}");
    let conv = r.get("conv").and_then(Bson::as_str).unwrap();
    assert!(
        conv.contains("There was a problem with the data type conversion."),
        "{conv}"
    );

    client.write_all(&message("read", &[])).unwrap();
    let r = read_reply(&mut client);
    assert_eq!(r.get("bob").and_then(Bson::as_str), Some("bob"), "{r:?}");
    assert_eq!(
        r.get("bob_note").cloned(),
        Some(Bson::Bool(true)),
        "empty string is nil"
    );
    assert_eq!(r.get("amy_level").and_then(Bson::as_i64), Some(7));
    assert_eq!(r.get("amy_score").cloned(), Some(Bson::Double(2.25)));
    assert_eq!(
        r.get("three").cloned(),
        Some(Bson::Bool(true)),
        "rolled back"
    );
    assert_eq!(
        r.get("level_type").and_then(Bson::as_i64),
        Some(4),
        "SQL_INTEGER"
    );
    assert_eq!(r.get("more").cloned(), Some(Bson::Bool(false)));
    assert_eq!(
        r.get("after").and_then(Bson::as_i64),
        Some(100),
        "no more result sets"
    );
    assert!(server.log().contains("[SQL]"), "{}", server.log());

    client.write_all(&message("cache", &[])).unwrap();
    let r = read_reply(&mut client);
    assert_eq!(r.get("a").and_then(Bson::as_str), Some("y"), "{r:?}");
    assert_eq!(r.get("c").and_then(Bson::as_str), Some("y"), "{r:?}");
    for k in ["none", "failed", "bad_kept"] {
        assert_eq!(r.get(k).cloned(), Some(Bson::Bool(true)), "{k}: {r:?}");
    }
    assert!(server.log().contains("loader boom"), "{}", server.log());
    client.write_all(&message("cached-elsewhere", &[])).unwrap();
    let r = read_reply(&mut client);
    assert_eq!(r.get("x").and_then(Bson::as_str), Some("y"), "{r:?}");
    client.write_all(&message("purge", &[])).unwrap();
    let r = read_reply(&mut client);
    assert_eq!(r.get("purged").and_then(Bson::as_str), Some("top"), "{r:?}");
    assert_eq!(r.get("n").and_then(Bson::as_i64), Some(1), "{r:?}");
    assert_eq!(r.get("after").cloned(), Some(Bson::Bool(true)), "{r:?}");

    client.write_all(&message("core", &[])).unwrap();
    let r = read_reply(&mut client);
    assert_eq!(r.get("ok").cloned(), Some(Bson::Bool(false)));
    assert!(
        r.get("err")
            .and_then(Bson::as_str)
            .unwrap()
            .contains("thread.new"),
        "{r:?}"
    );
}
