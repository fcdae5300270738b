//! The generated Lua (the golden module for `tests/golden/all_types.packets`) running in a
//! real LuaJIT state, in an environment holding only what the engine's sandbox gives scripts
//! (no `require`, `ffi`, `jit`, `debug`, `load`): valid packets pass with defaults filled,
//! each kind of invalid field is refused with its path and reason, constructors fill and
//! check replies, and `receive` answers `bad_packet` without calling the handler.

use mlua::{Lua, Table};

const MODULE: &str = include_str!("golden/all_types_packets.lua");

/// A Lua state with the generated module as global `P` (loaded in a sandbox-like
/// environment), plus a fake `socket` that records commits and closes and a fake
/// `stage.load` that serves handlers from the global table `handlers`.
fn state() -> Lua {
    let lua = Lua::new();
    lua.load(
        r#"
        sandbox = { type = type, pairs = pairs, ipairs = ipairs, tostring = tostring,
                    error = error, math = math, string = string, table = table }
        handlers, commits, closed = {}, {}, 0
        sandbox.stage = { load = function (name, f)
            local key = string.match(name, "^packet%+(.*)$")
            return f(handlers[key], {0, "packet.lua", 0})
        end }
        socket = { commit = function (v, addr) commits[#commits + 1] = v return 0 end,
                   close = function () closed = closed + 1 end }
        "#,
    )
    .exec()
    .unwrap();
    let env: Table = lua.globals().get("sandbox").unwrap();
    let module: Table = lua
        .load(MODULE)
        .set_name("all_types_packets.lua")
        .set_environment(env)
        .eval()
        .unwrap();
    lua.globals().set("P", module).unwrap();
    lua
}

/// Runs `code` (which must return a value) in `lua`.
fn eval<T: mlua::FromLuaMulti>(lua: &Lua, code: &str) -> T {
    lua.load(code)
        .eval()
        .unwrap_or_else(|e| panic!("{code}: {e}"))
}

/// Decodes the message built by `table` (Lua source) and returns the error's (field, reason),
/// or None when it passes.
fn refuse(lua: &Lua, msg: &str, table: &str) -> Option<(String, String)> {
    let code = format!(
        "local t, err = P.{msg}.decode({table}) if t then return nil end \
         assert(err.message == '{msg}', 'message') return err.field .. '|' .. err.reason"
    );
    let s: Option<String> = eval(lua, &code);
    s.map(|s| {
        let (f, r) = s.split_once('|').unwrap();
        (f.to_string(), r.to_string())
    })
}

fn assert_refused(lua: &Lua, msg: &str, table: &str, field: &str, reason: &str) {
    assert_eq!(
        refuse(lua, msg, table),
        Some((field.to_string(), reason.to_string())),
        "decoding {msg} {table}"
    );
}

const MOVE_OK: &str = "{pos = {x = 1, y = -2.5}, path = {{x = 0, y = 0}}}";

/// `MOVE_OK` with `extra` (Lua statements on `t`) applied.
fn move_with(extra: &str) -> String {
    format!("(function () local t = {MOVE_OK} {extra} return t end)()")
}

#[test]
fn valid_packets_pass_with_defaults_filled() {
    let lua = state();
    let ok: bool = eval(
        &lua,
        r#"
        local t = assert(P.login.decode({message = "login", name = "bob"}))
        return t.name == "bob" and t.level == 1 and t.token == "\0\255" and t.guest == false
            and t.tags == nil
        "#,
    );
    assert!(ok);
    let ok: bool = eval(
        &lua,
        &format!(
            r#"local t = assert(P.move.decode({}))
            return t.speed == 1.5 and #t.items == 2 and t.items[1].count == 1
               and t.items[2].color == "blue" and t.pos.x == 1 and t.facing == nil
               and t.grid[3][1] == 127 and t["end"] == true"#,
            move_with("t.items = {{id = 7}, {id = 8, count = 99, color = 'blue'}} t.grid = {{1, -128}, {}, {127}} t['end'] = true")
        ),
    );
    assert!(ok);
    // Defaults inside array elements are filled too, and each message gets its own `[]`.
    let ok: bool = eval(
        &lua,
        &format!(
            "local a = P.move.decode({}) local b = P.move.decode({MOVE_OK}) \
             return a.items[1].count == 1 and #b.items == 0 \
                and b.items ~= P.move.decode({MOVE_OK}).items",
            move_with("t.items = {{id = 7}}")
        ),
    );
    assert!(ok);
    // Edges of every range are inside it; UTF-8 text up to 4-byte sequences is accepted.
    let ok: bool = eval(
        &lua,
        r#"
        return P.moved.decode({id = -2147483648, pos = {x = 3.4e38, y = 1000}, small = 5,
                               big = 2^62, ratio = 1}) ~= nil
           and P.moved.decode({id = 2147483647, pos = {x = -3.4e38, y = -1000}, small = -5,
                               big = 0, ratio = 0}) ~= nil
           and P.login.decode({name = "h\195\169 \226\130\172 \240\159\152\128", tags = {}}) ~= nil
           and P.login_ok.decode({id = -2^63}) ~= nil
        "#,
    );
    assert!(ok);
}

#[test]
fn every_kind_of_bad_field_is_refused_with_path_and_reason() {
    let lua = state();
    let login = |f: &str| format!("{{name = 'bob', {f}}}");
    assert_refused(&lua, "login", "{level = 3}", "name", "missing");
    assert_refused(&lua, "login", "{name = 5}", "name", "expected string");
    assert_refused(&lua, "login", "{name = ''}", "name", "shorter than 1 bytes");
    assert_refused(
        &lua,
        "login",
        "{name = string.rep('a', 33)}",
        "name",
        "longer than 32 bytes",
    );
    assert_refused(&lua, "login", "{name = 'a\\255'}", "name", "invalid UTF-8");
    assert_refused(
        &lua,
        "login",
        "{name = 'a\\237\\160\\128'}",
        "name",
        "invalid UTF-8",
    ); // surrogate
    assert_refused(
        &lua,
        "login",
        "{name = '\\192\\175'}",
        "name",
        "invalid UTF-8",
    ); // overlong
    assert_refused(
        &lua,
        "login",
        "{name = 'ab\\226\\130'}",
        "name",
        "invalid UTF-8",
    ); // cut short
    assert_refused(
        &lua,
        "login",
        &login("level = 1.5"),
        "level",
        "not an integer",
    );
    assert_refused(
        &lua,
        "login",
        &login("level = 0/0"),
        "level",
        "not an integer",
    );
    assert_refused(
        &lua,
        "login",
        &login("level = '1'"),
        "level",
        "expected integer",
    );
    assert_refused(
        &lua,
        "login",
        &login("level = -1"),
        "level",
        "below minimum 0",
    );
    assert_refused(
        &lua,
        "login",
        &login("level = 65536"),
        "level",
        "above maximum 65535",
    );
    assert_refused(
        &lua,
        "login",
        &login("level = 1/0"),
        "level",
        "above maximum 65535",
    );
    assert_refused(
        &lua,
        "login",
        &login("guest = 1"),
        "guest",
        "expected boolean",
    );
    assert_refused(
        &lua,
        "login",
        &login("token = {}"),
        "token",
        "expected string",
    );
    assert_refused(
        &lua,
        "login",
        &login("token = string.rep('\\255', 65)"),
        "token",
        "longer than 64 bytes",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = 'x'"),
        "tags",
        "expected array",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = {'a', 5}"),
        "tags[2]",
        "expected string",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = {string.rep('a', 17)}"),
        "tags[1]",
        "longer than 16 bytes",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = {1, 2, 3, 4, 5, 6, 7, 8, 9}"),
        "tags",
        "more than 8 elements",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = {x = 'a'}"),
        "tags",
        "not an array",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = {'a', nil, 'c'}"),
        "tags",
        "not an array",
    );
    assert_refused(
        &lua,
        "login",
        &login("tags = {[0] = 'a'}"),
        "tags",
        "not an array",
    );
    assert_refused(&lua, "login", "5", "", "expected table");

    assert_refused(&lua, "move", &move_with("t.pos = nil"), "pos", "missing");
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos = 3"),
        "pos",
        "expected table",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos.x = 0/0"),
        "pos.x",
        "not finite",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos.x = -1/0"),
        "pos.x",
        "not finite",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos.x = 1e39"),
        "pos.x",
        "above maximum 3.4028234663853e+38",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos.y = 1000.5"),
        "pos.y",
        "above maximum 1000",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos.y = true"),
        "pos.y",
        "expected number",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.speed = -0.1"),
        "speed",
        "below minimum 0",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.facing = 'pink'"),
        "facing",
        "unknown enum value",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.facing = 2"),
        "facing",
        "expected string",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.path = {}"),
        "path",
        "fewer than 1 elements",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.path[2] = {x = 1}"),
        "path[2].y",
        "missing",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.path[2] = 'p'"),
        "path[2]",
        "expected table",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.grid = {{}, {1, 2, 300}}"),
        "grid[2][3]",
        "above maximum 127",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.grid = {{1, 2, 3, 4}}"),
        "grid[1]",
        "more than 3 elements",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.items = {{id = 1}, {id = 2, count = 0}}"),
        "items[2].count",
        "below minimum 1",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.items = {{id = 1, color = 'red'}, {id = 2, color = 'x'}}"),
        "items[2].color",
        "unknown enum value",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t.items = {{id = -1}}"),
        "items[1].id",
        "below minimum 0",
    );
    assert_refused(
        &lua,
        "move",
        &move_with("t['end'] = 'yes'"),
        "end",
        "expected boolean",
    );
    // i64: 2^63 is not an int64 (the engine would send it as a double).
    assert_refused(
        &lua,
        "login_ok",
        "{id = 2^63}",
        "id",
        "above maximum 9.2233720368548e+18",
    );
    assert_refused(
        &lua,
        "moved",
        "{id = 1, pos = {x = 0, y = 0}, small = 6, big = 1}",
        "small",
        "above maximum 5",
    );
}

#[test]
fn unknown_fields_are_dropped_rejected_or_kept() {
    let lua = state();
    let ok: bool = eval(
        &lua,
        &format!(
            "local t = assert(P.move.decode({})) \
             return t.zz == nil and t.pos.extra == nil and t[1] == nil and t.message == 'move'",
            move_with("t.zz = 1 t.pos.extra = {} t[1] = 2 t.message = 'move'")
        ),
    );
    assert!(
        ok,
        "drop (the default) removes unknown fields at every level"
    );
    lua.load("P.unknown_fields = 'reject'").exec().unwrap();
    assert_refused(
        &lua,
        "move",
        &move_with("t.pos.extra = 1"),
        "pos.extra",
        "unknown field",
    );
    assert_refused(
        &lua,
        "move",
        &move_with(&format!("t['{}'] = 1", "k".repeat(100))),
        &format!("{}...", "k".repeat(64)),
        "unknown field",
    );
    lua.load("P.unknown_fields = 'keep'").exec().unwrap();
    let ok: bool = eval(
        &lua,
        &format!(
            "return P.move.decode({}).pos.extra == 1",
            move_with("t.pos.extra = 1")
        ),
    );
    assert!(ok);
}

#[test]
fn constructors_fill_defaults_and_raise_on_bad_fields() {
    let lua = state();
    let ok: bool = eval(
        &lua,
        "local t = P.login_ok.new{id = 5} return t.message == 'login_ok' and t.color == 'green' and t.motd == 'welcome'",
    );
    assert!(ok);
    for (code, want) in [
        ("P.login_ok.new{id = 1.5}", "login_ok.id: not an integer"),
        (
            "P.login_ok.new{id = 1, colour = 'red'}",
            "login_ok.colour: unknown field",
        ),
        (
            "P.moved.new{id = 1, pos = {x = 0}, small = 0, big = 0}",
            "login_ok",
        ),
    ] {
        let err = lua.load(code).exec().unwrap_err().to_string();
        let want = if want == "login_ok" {
            "moved.pos.y: missing"
        } else {
            want
        };
        assert!(err.contains(want), "{code}: {err}");
    }
}

#[test]
fn decode_by_name_refuses_unknown_and_missing_messages() {
    let lua = state();
    let r: String = eval(
        &lua,
        r#"
        local out = {}
        for _, d in ipairs({ 5, {}, {message = 1}, {message = "nope"}, {message = "login"} }) do
            local t, e = P.decode(d)
            out[#out + 1] = tostring(e.message) .. ":" .. e.field .. ":" .. e.reason
        end
        return table.concat(out, "|")
        "#,
    );
    assert_eq!(
        r,
        "nil::expected table|nil:message:missing|nil:message:expected string|nope:message:unknown message|login:name:missing"
    );
}

#[test]
fn receive_answers_bad_packet_and_never_calls_the_handler() {
    let lua = state();
    let r: String = eval(
        &lua,
        r#"
        local calls = 0
        handlers.login = function (socket, data) calls = calls + 1 return {id = 42} end
        P.receive(socket, {message = "login", name = "bob", level = 70000})
        P.receive(socket, {message = "login_ok", id = 1})  -- a server message from a client
        P.receive(socket, {message = "nope"})
        local out = {}
        for _, c in ipairs(commits) do
            out[#out + 1] = c.message .. "/" .. c.code .. "/" .. tostring(c["for"]) .. "/" .. c.field .. "/" .. c.reason
        end
        return calls .. " " .. closed .. " " .. table.concat(out, " | ")
        "#,
    );
    assert_eq!(
        r,
        "0 0 error/bad_packet/login/level/above maximum 65535 | error/bad_packet/login_ok/message/not a client message | error/bad_packet/nope/message/unknown message"
    );
    // With on_bad_packet = "close" the connection is closed after the answer.
    let closed: i64 = eval(
        &lua,
        "P.on_bad_packet = 'close' P.receive(socket, {message = 'login'}) return closed",
    );
    assert_eq!(closed, 1);
}

#[test]
fn receive_runs_the_handler_with_checked_data_and_completes_the_reply() {
    let lua = state();
    let r: String = eval(
        &lua,
        r#"
        local seen
        handlers.login = function (socket, data) seen = data return {id = 42} end
        local v = P.receive(socket, {message = "login", name = "bob", junk = 1}, "addr")
        local c = commits[1]
        return seen.level .. " " .. tostring(seen.junk) .. " " .. c.message .. " " .. c.id .. " "
            .. c.color .. " " .. tostring(v == c)
        "#,
    );
    assert_eq!(r, "1 nil login_ok 42 green true");
    // A handler's bad reply is the server's bug: it raises (the engine logs it) and nothing
    // is sent.
    let r: String = eval(
        &lua,
        r#"
        handlers.login = function () return {id = "x"} end
        local ok, err = pcall(P.receive, socket, {message = "login", name = "bob"})
        return tostring(ok) .. " " .. #commits .. " " .. tostring(err)
        "#,
    );
    assert!(
        r.starts_with("false 1 ") && r.contains("login_ok.id: expected integer"),
        "{r}"
    );
}
