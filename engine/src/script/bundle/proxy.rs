//! `bundle.proxy(t, rules [, fn])`: an object that reads like `t` and runs handlers when
//! fields are written through it, e.g. "level up when xp crosses 100, 250, 500".
//!
//! The proxy is an empty Lua table whose metatable has `__index = t` (reads are plain table
//! reads, as fast as reading `t`, and see later writes made to `t` directly) and a
//! `__newindex` native that writes `t` and fires the rules. The metatable is protected
//! (`getmetatable(proxy)` returns the string `"bundle.proxy"`), and the proxy keeps no
//! registry references, so it is garbage-collected like any table.
//!
//! Rules (read from `rules` at write time, so rules added later apply; checked once when the
//! proxy is made):
//! * `rules[key] = F`: `F(proxy, old_value, key, new_value)` after `key` changes. The second
//!   argument (the spec's "edges") is the previous value, the useful thing to have for a
//!   plain change handler.
//! * `rules[key] = { V1, V2, ..., F1, N1, ..., F2 }`: thresholds. Each function owns the
//!   numbers listed before it (since the previous function). When `key` moves from `old` to
//!   `new`, a threshold `V` is crossed upward if `old < V <= new` and downward if
//!   `new < V <= old` ("reaching" a threshold counts, leaving it downward counts), and each
//!   function whose group had crossings is called as `F(proxy, crossed, key, new_value)`
//!   with `crossed` the list of crossed thresholds in the order they were passed (ascending
//!   going up, descending going down). From 12 to 34 with `{10, 20, 30, F1, 40, F2}`:
//!   `F1({20, 30})`, F2 not called. A value that is not a number (nil included) counts as
//!   below every threshold, so setting an absent key to 34 crosses 10, 20 and 30.
//!   Numbers after the last function would have no handler and are an error.
//! * `rules[""] = F`: a guard, called as `F(proxy, key, new_value, old_value)` before every
//!   write through the proxy (any key); returning exactly `false` drops the write silently
//!   (nil or no result lets it through).
//!
//! "Change" means the new value is not equal (`==` without metamethods) to the old one;
//! writing the same value again fires nothing. Handlers run after `t` has been updated, in
//! the rules' order. While a key's handlers run, writes to that same key through the proxy
//! are stored but do not fire its handlers again (writes to other keys fire theirs, so
//! chains like xp -> level work; a cycle stops at the first key already running). A
//! handler's error propagates to the writer, after the key is released.
//!
//! * `rules[n] = "name"` (a string at a numeric index, as in `{"actor", hp = F}`), or
//!   `rules[""] = "name"`, or `rules` itself a string: the proxy's name, as in the original.
//!   `tostring(proxy)` is `name:[tostring(t)]` (the name up to its first `:`), `proxy:[...]`
//!   when unnamed. A name is not a rule: writing `proxy[n]` fires nothing for it.
//!
//! `fn`, if given, is called as `fn(proxy)` and its results are returned instead of the
//! proxy.
//!
//! Iteration and length: LuaJIT (built without LUA52COMPAT) ignores `__pairs` and `__len`
//! on tables, so `pairs(proxy)` sees nothing and `#proxy` is 0. Calling the proxy returns
//! the observed table: `for k, v in pairs(proxy()) do`, `#proxy()`. (Writes made to that
//! table directly bypass the rules.) `__pairs`/`__len` are set anyway for builds that honour
//! them. `bundle.json` and `bundle.bson` encode a proxy as its observed table.
//!
//! Not implemented: the key-translation forms (`rules[1] = keyfn`,
//! `rules[""] = { "name:{...}", keyfn, ["*"] = F, ["#"] = F }`, `stage.index`). A rules table
//! using them is refused with "bundle.proxy: key translation rules are not supported yet"
//! rather than half-working.

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::{as_number, call_user, fail, key_text, native, type_name, Res};

/// Metatable slot holding the rules table.
const RULES: &str = "__bundle_rules";
/// Metatable slot holding the set of keys whose handlers are running.
const ACTIVE: &str = "__bundle_active";
/// Metatable slot holding the proxy's name (what `tostring` shows).
const NAME: &str = "__bundle_name";
/// What `getmetatable(proxy)` returns.
const TAG: &str = "bundle.proxy";
/// The name of a proxy whose rules give none (the original's default).
const DEFAULT_NAME: &str = "proxy";

/// Builds `bundle.proxy` and the metamethods all proxies of this state share.
pub(super) fn create(lua: &Lua) -> mlua::Result<Function> {
    let newindex = native(lua, "bundle.proxy", newindex)?;
    let call = native(lua, "bundle.proxy", |_, args| {
        let target = match args.front() {
            Some(Value::Table(p)) => target_of(p),
            _ => None,
        };
        match target {
            Some(t) => Ok(MultiValue::from_vec(vec![Value::Table(t)])),
            None => fail("bundle.proxy: not a proxy"),
        }
    })?;
    let next: Function = lua.globals().get("next")?;
    let pairs = native(lua, "bundle.proxy", move |_, args| {
        let target = match args.front() {
            Some(Value::Table(p)) => target_of(p),
            _ => None,
        };
        match target {
            Some(t) => Ok(MultiValue::from_vec(vec![
                Value::Function(next.clone()),
                Value::Table(t),
                Value::Nil,
            ])),
            None => fail("bundle.proxy: not a proxy"),
        }
    })?;
    let len = native(lua, "bundle.proxy", |_, args| {
        let target = match args.front() {
            Some(Value::Table(p)) => target_of(p),
            _ => None,
        };
        match target {
            Some(t) => Ok(MultiValue::from_vec(vec![Value::Integer(
                t.raw_len() as i64
            )])),
            None => fail("bundle.proxy: not a proxy"),
        }
    })?;
    let tostring: Function = lua.globals().get("tostring")?;
    let show = native(lua, "bundle.proxy", move |lua, args| {
        let Some(Value::Table(p)) = args.front() else {
            return fail("bundle.proxy: not a proxy");
        };
        let (Some(t), Some(m)) = (target_of(p), p.metatable()) else {
            return fail("bundle.proxy: not a proxy");
        };
        let name: String = m.raw_get(NAME)?;
        // The original shows the name up to its first `:` (a `name:{...}` form's prefix).
        let name = name.split(':').next().unwrap_or_default();
        let inner: mlua::String = tostring.call(Value::Table(t))?;
        let text = format!("{name}:[{}]", inner.to_str()?);
        Ok(MultiValue::from_vec(vec![Value::String(
            lua.create_string(text)?,
        )]))
    })?;
    let shared = Shared {
        newindex,
        call,
        pairs,
        len,
        show,
    };
    native(lua, "bundle.proxy", move |lua, args| {
        make(lua, args, &shared)
    })
}

/// The metamethods every proxy of a state shares.
struct Shared {
    newindex: Function,
    call: Function,
    pairs: Function,
    len: Function,
    show: Function,
}

/// Whether `(k, v)` of a rules table names the proxy rather than being a rule: a string at a
/// numeric index, or at `""`.
fn is_name(k: &Value, v: &Value) -> bool {
    matches!(v, Value::String(_))
        && (is_blank(k) || matches!(k, Value::Integer(_) | Value::Number(_)))
}

/// The table a proxy observes, or None if `p` is not a proxy.
pub(super) fn target_of(p: &Table) -> Option<Table> {
    let m = p.metatable()?;
    if !matches!(m.raw_get::<Value>(RULES), Ok(Value::Table(_))) {
        return None;
    }
    m.raw_get::<Table>("__index").ok()
}

fn make(lua: &Lua, args: MultiValue, shared: &Shared) -> Res<MultiValue> {
    let mut args = args.into_iter();
    let t = match args.next().unwrap_or(Value::Nil) {
        Value::Table(t) => t,
        other => {
            return fail(format!(
                "bundle.proxy: expected a table to observe, got {}",
                type_name(&other)
            ))
        }
    };
    let mut name = None;
    let rules = match args.next().unwrap_or(Value::Nil) {
        Value::Table(r) => r,
        Value::Nil => lua.create_table()?,
        // `stage.proxy(t, "name")`: a name and no rules.
        Value::String(s) => {
            name = Some(s.to_str()?.to_owned());
            lua.create_table()?
        }
        other => {
            return fail(format!(
                "bundle.proxy: rules must be a table, got {}",
                type_name(&other)
            ))
        }
    };
    let f = match args.next().unwrap_or(Value::Nil) {
        Value::Function(f) => Some(f),
        Value::Nil => None,
        other => {
            return fail(format!(
                "bundle.proxy: the third argument must be a function, got {}",
                type_name(&other)
            ))
        }
    };
    let mut entries = Vec::new();
    rules.for_each::<Value, Value>(|k, v| {
        entries.push((k, v));
        Ok(())
    })?;
    for (k, v) in &entries {
        if is_name(k, v) {
            if let Value::String(s) = v {
                name = Some(s.to_str()?.to_owned());
            }
            continue;
        }
        check_rule(k, v)?;
    }

    let m = lua.create_table_with_capacity(0, 8)?;
    m.raw_set("__index", t)?;
    m.raw_set("__newindex", shared.newindex.clone())?;
    m.raw_set("__call", shared.call.clone())?;
    m.raw_set("__pairs", shared.pairs.clone())?;
    m.raw_set("__len", shared.len.clone())?;
    m.raw_set("__tostring", shared.show.clone())?;
    m.raw_set("__metatable", TAG)?;
    m.raw_set(NAME, name.as_deref().unwrap_or(DEFAULT_NAME))?;
    m.raw_set(RULES, rules)?;
    let p = lua.create_table()?;
    p.set_metatable(Some(m))?;
    match f {
        Some(f) => call_user(lua, &f, MultiValue::from_vec(vec![Value::Table(p)])),
        None => Ok(MultiValue::from_vec(vec![Value::Table(p)])),
    }
}

fn translation_unsupported<T>() -> Res<T> {
    fail("bundle.proxy: key translation rules are not supported yet")
}

fn is_blank(k: &Value) -> bool {
    matches!(k, Value::String(s) if s.as_bytes().is_empty())
}

/// Validates one `rules` entry.
fn check_rule(k: &Value, v: &Value) -> Res<()> {
    if is_blank(k) {
        return match v {
            Value::Function(_) => Ok(()),
            Value::Table(_) => translation_unsupported(),
            other => fail(format!(
                "bundle.proxy: rules[\"\"] must be a function (a write guard), got {}",
                type_name(other)
            )),
        };
    }
    match v {
        Value::Function(_) if matches!(k, Value::Integer(1)) => translation_unsupported(),
        Value::Function(_) => Ok(()),
        Value::Table(list) => groups(list, k).map(|_| ()),
        other => fail(format!(
            "bundle.proxy: rules[{}] must be a function or a threshold list {{V1, ..., F1, ...}}, got {}",
            key_text(k),
            type_name(other)
        )),
    }
}

/// Splits a threshold list into (thresholds, handler) groups.
fn groups(list: &Table, k: &Value) -> Res<Vec<(Vec<f64>, Function)>> {
    let n = list.raw_len();
    let mut extra = false;
    list.for_each::<Value, Value>(|key, _| {
        if !matches!(super::as_integer(&key), Some(i) if i >= 1 && i as usize <= n) {
            extra = true;
        }
        Ok(())
    })?;
    if extra {
        return fail(format!(
            "bundle.proxy: rules[{}] must be a plain list of thresholds and functions",
            key_text(k)
        ));
    }
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for i in 1..=n {
        match list.raw_get::<Value>(i)? {
            Value::Function(f) => out.push((std::mem::take(&mut pending), f)),
            v => match as_number(&v) {
                Some(x) if !x.is_nan() => pending.push(x),
                _ => {
                    return fail(format!(
                        "bundle.proxy: rules[{}][{i}] must be a number or a function, got {}",
                        key_text(k),
                        type_name(&v)
                    ))
                }
            },
        }
    }
    if !pending.is_empty() {
        return fail(format!(
            "bundle.proxy: rules[{}] has thresholds after its last function (no handler for them)",
            key_text(k)
        ));
    }
    Ok(out)
}

/// The thresholds passed when moving from `from` to `to`, in passing order. Non-numbers
/// (None) sit below every threshold.
fn crossed(thresholds: &[f64], from: Option<f64>, to: Option<f64>) -> Vec<f64> {
    let lo = from.unwrap_or(f64::NEG_INFINITY);
    let hi = to.unwrap_or(f64::NEG_INFINITY);
    let mut out: Vec<f64>;
    if hi > lo {
        out = thresholds
            .iter()
            .copied()
            .filter(|&v| lo < v && v <= hi)
            .collect();
        out.sort_by(f64::total_cmp);
    } else if hi < lo {
        out = thresholds
            .iter()
            .copied()
            .filter(|&v| hi < v && v <= lo)
            .collect();
        out.sort_by(|a, b| b.total_cmp(a));
    } else {
        out = Vec::new();
    }
    out
}

fn newindex(lua: &Lua, args: MultiValue) -> Res<MultiValue> {
    let mut args = args.into_iter();
    let p = match args.next() {
        Some(Value::Table(p)) => p,
        _ => return fail("bundle.proxy: not a proxy"),
    };
    let k = args.next().unwrap_or(Value::Nil);
    let v = args.next().unwrap_or(Value::Nil);
    let Some(m) = p.metatable() else {
        return fail("bundle.proxy: not a proxy");
    };
    let (Ok(t), Ok(rules)) = (m.raw_get::<Table>("__index"), m.raw_get::<Table>(RULES)) else {
        return fail("bundle.proxy: not a proxy");
    };
    let none = MultiValue::new();
    let old: Value = t.get(k.clone())?;

    match rules.raw_get::<Value>("")? {
        Value::Function(guard) => {
            let verdict = call_user(
                lua,
                &guard,
                MultiValue::from_vec(vec![
                    Value::Table(p.clone()),
                    k.clone(),
                    v.clone(),
                    old.clone(),
                ]),
            )?;
            if matches!(verdict.front(), Some(Value::Boolean(false))) {
                return Ok(none);
            }
        }
        // Nothing, or the proxy's name.
        Value::Nil | Value::String(_) => {}
        Value::Table(_) => return translation_unsupported(),
        other => {
            return fail(format!(
                "bundle.proxy: rules[\"\"] must be a function (a write guard), got {}",
                type_name(&other)
            ))
        }
    }

    let rule: Value = if is_blank(&k) {
        Value::Nil
    } else {
        match rules.raw_get(k.clone())? {
            // A name (`{"actor", ...}`), not a rule for this key.
            ref v if is_name(&k, v) => Value::Nil,
            v => v,
        }
    };
    if rule.is_nil() {
        t.set(k, v)?;
        return Ok(none);
    }
    let active: Table = match m.raw_get::<Value>(ACTIVE)? {
        Value::Table(a) => a,
        _ => {
            let a = lua.create_table()?;
            m.raw_set(ACTIVE, a.clone())?;
            a
        }
    };
    let running = !active.raw_get::<Value>(k.clone())?.is_nil();
    let changed = old != v;
    t.set(k.clone(), v.clone())?;
    if running || !changed {
        return Ok(none);
    }
    active.raw_set(k.clone(), true)?;
    let result = fire(lua, &p, &rule, &k, &old, &v);
    active.raw_set(k, Value::Nil)?;
    result?;
    Ok(none)
}

/// Runs `rule` for a change of `k` from `old` to `new`.
fn fire(lua: &Lua, p: &Table, rule: &Value, k: &Value, old: &Value, new: &Value) -> Res<()> {
    match rule {
        Value::Function(f) => {
            call_user(
                lua,
                f,
                MultiValue::from_vec(vec![
                    Value::Table(p.clone()),
                    old.clone(),
                    k.clone(),
                    new.clone(),
                ]),
            )?;
        }
        Value::Table(list) => {
            let from = as_number(old);
            let to = as_number(new);
            for (thresholds, f) in groups(list, k)? {
                let passed = crossed(&thresholds, from, to);
                if passed.is_empty() {
                    continue;
                }
                let edges = lua.create_sequence_from(passed)?;
                call_user(
                    lua,
                    &f,
                    MultiValue::from_vec(vec![
                        Value::Table(p.clone()),
                        Value::Table(edges),
                        k.clone(),
                        new.clone(),
                    ]),
                )?;
            }
        }
        other => {
            return fail(format!(
                "bundle.proxy: rules[{}] must be a function or a threshold list, got {}",
                key_text(k),
                type_name(other)
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::crossed;

    fn run(code: &str) {
        let lua = lua();
        lua.load(code).exec().unwrap();
    }

    #[test]
    fn bundle_proxy_crossing_rules() {
        assert_eq!(
            crossed(&[10.0, 20.0, 30.0], Some(12.0), Some(34.0)),
            vec![20.0, 30.0]
        );
        assert_eq!(crossed(&[40.0], Some(12.0), Some(34.0)), Vec::<f64>::new());
        assert_eq!(
            crossed(&[30.0, 10.0, 20.0], Some(34.0), Some(12.0)),
            vec![30.0, 20.0]
        );
        assert_eq!(
            crossed(&[10.0, 20.0, 30.0], None, Some(34.0)),
            vec![10.0, 20.0, 30.0]
        );
        assert_eq!(crossed(&[10.0], Some(10.0), Some(10.0)), Vec::<f64>::new());
        assert_eq!(crossed(&[10.0], Some(9.0), Some(10.0)), vec![10.0]);
        assert_eq!(crossed(&[10.0], Some(10.0), Some(9.0)), vec![10.0]);
        assert_eq!(
            crossed(&[10.0], Some(f64::NAN), Some(20.0)),
            Vec::<f64>::new()
        );
    }

    #[test]
    fn bundle_proxy_spec_threshold_example() {
        run(r#"
            local calls = {}
            local T = { A = 12 }
            local p = bundle.proxy(T, {
              A = { 10, 20, 30, function(proxy, edges, k, v)
                      calls[#calls + 1] = { "F1", edges, k, v, proxy }
                    end,
                    40, function(proxy, edges, k, v)
                      calls[#calls + 1] = { "F2", edges, k, v }
                    end },
            })
            p.A = 34
            assert(#calls == 1, "calls: " .. #calls)
            local c = calls[1]
            assert(c[1] == "F1" and #c[2] == 2 and c[2][1] == 20 and c[2][2] == 30)
            assert(c[3] == "A" and c[4] == 34 and c[5] == p)
            assert(T.A == 34 and p.A == 34)
            -- downward: 34 -> 5 crosses 30, 20, 10 in that order
            calls = {}
            p.A = 5
            assert(#calls == 1 and calls[1][1] == "F1")
            local e = calls[1][2]
            assert(#e == 3 and e[1] == 30 and e[2] == 20 and e[3] == 10)
            -- upward past 40 fires both groups
            calls = {}
            p.A = 45
            assert(#calls == 2 and calls[1][1] == "F1" and #calls[1][2] == 3)
            assert(calls[2][1] == "F2" and calls[2][2][1] == 40)
            -- no crossing, no call; same value, no call
            calls = {}
            p.A = 46 p.A = 46
            assert(#calls == 0)
        "#);
    }

    #[test]
    fn bundle_proxy_plain_handlers_and_retrigger() {
        run(r#"
            local log = {}
            local T = { value = 10, level = 1 }
            local p
            p = bundle.proxy(T, {
              value = { 10, 20, 30, function(proxy, edges, k, v)
                for _, e in ipairs(edges) do proxy.level = math.floor(e / 10) end
                proxy.value = v + 1000  -- same key: stored, not re-fired
              end },
              level = function(proxy, old, k, v)
                log[#log + 1] = k .. ":" .. tostring(old) .. "->" .. v
              end,
            })
            p.value = 30
            assert(table.concat(log, ",") == "level:1->2,level:2->3", table.concat(log, ","))
            assert(T.value == 1030 and p.level == 3)
            -- keys without rules are plain writes
            p.other = "x"
            assert(T.other == "x" and rawget(p, "other") == nil)
            -- reads see direct writes to the target
            T.level = 9
            assert(p.level == 9)
        "#);
    }

    #[test]
    fn bundle_proxy_guard_and_fn_and_iteration() {
        run(r#"
            local T = { gold = 5 }
            local fired = 0
            local p, extra = bundle.proxy(T, {
              [""] = function(proxy, k, v, old)
                if k == "gold" and v < 0 then return false end
              end,
              gold = function() fired = fired + 1 end,
            }, function(proxy) return proxy, "extra" end)
            assert(extra == "extra")
            p.gold = -1
            assert(T.gold == 5 and fired == 0)
            p.gold = 7
            assert(T.gold == 7 and fired == 1)
            -- iteration and length go through the call form
            T[1], T[2] = "a", "b"
            local n = 0
            for k, v in pairs(p()) do n = n + 1 end
            assert(n == 3 and #p() == 2 and p() == T)
            assert(getmetatable(p) == "bundle.proxy")
            assert(bundle.json(p) == bundle.json(T))
            -- handler errors reach the writer unchanged
            local q = bundle.proxy({}, { x = function() error({ why = "no" }) end })
            local ok, e = pcall(function() q.x = 1 end)
            assert(not ok and type(e) == "table" and e.why == "no")
            -- and the key is released afterwards
            local ok2 = pcall(function() q.x = 2 end)
            assert(not ok2)
        "#);
    }

    #[test]
    fn a_string_at_a_numeric_index_names_the_proxy() {
        run(r#"
            local t = {}
            local seen = {}
            local p = bundle.proxy(t, { "actor", hp = function(_, old, k, new) seen[#seen + 1] = new end })
            local shown = tostring(p)
            assert(shown == "actor:[" .. tostring(t) .. "]", shown)
            p.hp = 5
            assert(seen[1] == 5 and t.hp == 5)
            -- writing the index that holds the name is a plain write
            p[1] = "x"
            assert(t[1] == "x")
            -- the name up to its first ':'; unnamed proxies show as `proxy`
            local q = bundle.proxy(t, { [""] = "npc:{id}" })
            assert(tostring(q) == "npc:[" .. tostring(t) .. "]", tostring(q))
            local r = bundle.proxy(t, {})
            assert(tostring(r) == "proxy:[" .. tostring(t) .. "]", tostring(r))
            local s = bundle.proxy(t, "mob")
            assert(tostring(s) == "mob:[" .. tostring(t) .. "]", tostring(s))
        "#);
    }

    #[test]
    fn bundle_proxy_rule_errors() {
        let lua = lua();
        for code in [
            "bundle.proxy({}, { [1] = function() end })",
            "bundle.proxy({}, { [''] = { 'name:{x}', function() end } })",
        ] {
            assert_eq!(
                error_of(&lua, code),
                "bundle.proxy: key translation rules are not supported yet"
            );
        }
        let e = error_of(&lua, "bundle.proxy({}, { hp = { 10, 20 } })");
        assert!(e.contains("thresholds after its last function"), "{e}");
        let e = error_of(&lua, "bundle.proxy({}, { hp = { 'x', function() end } })");
        assert!(
            e.contains("rules[\"hp\"][1] must be a number or a function"),
            "{e}"
        );
        let e = error_of(&lua, "bundle.proxy({}, { hp = 5 })");
        assert!(e.starts_with("bundle.proxy: rules[\"hp\"] must be"), "{e}");
        let e = error_of(&lua, "bundle.proxy(5, {})");
        assert!(e.starts_with("bundle.proxy: expected a table"), "{e}");
    }
}
