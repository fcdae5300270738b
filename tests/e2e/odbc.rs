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
