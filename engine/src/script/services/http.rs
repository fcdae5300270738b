//! The natives behind curl.so stages (spec services.md §5.2): `E.http_call` turns a routed
//! message's Lua request (a URL string, or `{url, header, data, timeout, extra}`) into an
//! [`HttpRequest`] and spawns it on this core; the request itself waits on isahc's agent
//! thread, so the core goes on serving. When it completes, the reply is kept here (core-local)
//! and a `http_done` post carrying its handle goes through this core's inbox; the prelude then
//! calls `E.http_reply(handle)` for the reply table and the envelope it stored (who to answer,
//! the callback, `extra`) and sends it like any reply. Keeping the reply in Rust until Lua
//! asks for it means the task that awaits isahc never touches the Lua state. The post is
//! never dropped at a full inbox (someone waits for the reply): the task, still on this core,
//! tries again after a glommio timer (`node::retry::until_taken_async`) while the core drains.
//!
//! Lua tables have no key order, so form fields and header lines are sent sorted by name.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use mlua::{Lua, Table, Value};

use crate::node::post::PostKind;
use crate::node::{retry, CoreMsg};
use crate::script::natives::{core, node};
use crate::service::http::{code, Body, FormValue, HttpReply, HttpRequest};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("http_call", lua.create_function(http_call)?)?;
    e.set("http_reply", lua.create_function(http_reply)?)?;
    Ok(())
}

thread_local! {
    /// Replies waiting for the prelude, with the envelope given at the call, by handle.
    static DONE: RefCell<HashMap<u64, (HttpReply, Bytes)>> = RefCell::new(HashMap::new());
    static NEXT: Cell<u64> = const { Cell::new(1) };
}

/// `E.http_call(stage, request, deadline_ms, envelope)`: starts the request; its reply comes
/// back as the post `http_done` `{h = handle}`.
fn http_call(
    lua: &Lua,
    (stage, request, deadline, envelope): (usize, Value, Option<f64>, mlua::String),
) -> mlua::Result<()> {
    let node = node(lua)?;
    let core = core()?;
    let agent = node.http.get(&stage).cloned();
    let envelope = Bytes::copy_from_slice(&envelope.as_bytes());
    let handle = NEXT.with(|n| {
        let h = n.get();
        n.set(h + 1);
        h
    });
    let time_left = deadline.map(|d| {
        let now = crate::script::messaging::wall_ms();
        Duration::from_millis((d - now).max(0.0) as u64)
    });
    let parsed = request_from_lua(&request);
    let me = core.index;
    glommio::spawn_local(async move {
        let reply = match (parsed, agent) {
            (Ok(req), Some(agent)) => agent.execute(req, time_left).await,
            (Ok(req), None) => HttpReply::failed(
                &req.url,
                None,
                code::FAILED_INIT,
                "this curl.so stage has no HTTP client (see the log at start-up)".into(),
            ),
            (Err((url, why)), _) => HttpReply::failed(&url, None, code::URL_MALFORMAT, why),
        };
        // By result: `ok`, or curl's result code (7 refused, 28 timeout, ...).
        let result = match reply.data.result {
            0 => "ok".to_string(),
            code => format!("curl_{code}"),
        };
        crate::node::runtime::with_current(|c| c.stats.services.http_result(&result));
        DONE.with(|d| d.borrow_mut().insert(handle, (reply, envelope)));
        let payload = handle_doc(handle);
        let sent = retry::until_taken_async(me, "a curl.so reply", || {
            let payload = payload.clone();
            node.send(
                me,
                CoreMsg::Post {
                    kind: PostKind::HttpDone,
                    payload,
                },
            )
        })
        .await;
        if let Err(err) = sent {
            DONE.with(|d| d.borrow_mut().remove(&handle));
            node.log_dropped(me, &err);
        }
    })
    .detach();
    Ok(())
}

/// The BSON document `{h = handle}` (int64), written by hand: no Lua state at hand.
fn handle_doc(handle: u64) -> Bytes {
    let mut doc = Vec::with_capacity(16);
    doc.extend_from_slice(&16i32.to_le_bytes());
    doc.push(0x12);
    doc.extend_from_slice(b"h\0");
    doc.extend_from_slice(&(handle as i64).to_le_bytes());
    doc.push(0);
    Bytes::from(doc)
}

/// `E.http_reply(handle)` -> the reply table and the envelope given to `E.http_call`.
fn http_reply(lua: &Lua, handle: u64) -> mlua::Result<(Value, Value)> {
    let Some((reply, envelope)) = DONE.with(|d| d.borrow_mut().remove(&handle)) else {
        return Ok((Value::Nil, Value::Nil));
    };
    Ok((
        Value::Table(reply_table(lua, reply)?),
        Value::String(lua.create_string(&envelope)?),
    ))
}

/// Spec §5.2 "Reply": `{url, redirect_url?, effective_url?, status, cookie?, data = {...}}`.
fn reply_table(lua: &Lua, reply: HttpReply) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("url", reply.url)?;
    t.raw_set("redirect_url", reply.redirect_url)?;
    t.raw_set("effective_url", reply.effective_url)?;
    t.raw_set("status", reply.status)?;
    if let Some(cookies) = reply.cookie {
        t.raw_set("cookie", lua.create_sequence_from(cookies)?)?;
    }
    let d = reply.data;
    let data = lua.create_table()?;
    // The content type's parameters first, so a parameter can never hide a fixed field.
    for (k, v) in d.params {
        data.raw_set(k, v)?;
    }
    data.raw_set("type", d.mime)?;
    data.raw_set("length", d.length as f64)?;
    data.raw_set("bps", d.bps)?;
    data.raw_set("content", lua.create_string(&d.content)?)?;
    data.raw_set("result", d.result)?;
    data.raw_set("message", d.message)?;
    data.raw_set("time", d.time)?;
    t.raw_set("data", data)?;
    Ok(t)
}

/// Lua -> request. An error carries the URL (if any) and what is wrong, for the reply.
fn request_from_lua(v: &Value) -> Result<HttpRequest, (String, String)> {
    let t = match v {
        Value::String(s) => return Ok(HttpRequest::get(s.to_string_lossy())),
        Value::Table(t) => t,
        other => {
            return Err((
                String::new(),
                format!(
                    "a request is a URL or a table {{url = ...}}, not {}",
                    other.type_name()
                ),
            ))
        }
    };
    let url = match t.raw_get::<Value>("url") {
        Ok(Value::String(s)) => s.to_string_lossy(),
        _ => return Err((String::new(), "the request has no `url` string".into())),
    };
    let fail = |why: String| (url.clone(), why);
    let mut req = HttpRequest::get(url.clone());
    if let Ok(Value::Table(h)) = t.raw_get::<Value>("header") {
        req.headers = sorted_pairs(&h).map_err(|e| fail(format!("header: {e}")))?;
    }
    match t.raw_get::<Value>("data") {
        Ok(Value::Nil) | Err(_) => {}
        Ok(Value::String(s)) => req.body = Some(Body::Raw(Bytes::copy_from_slice(&s.as_bytes()))),
        Ok(Value::Table(form)) => {
            let mut fields = Vec::new();
            for pair in form.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| fail(e.to_string()))?;
                let k = text(&k).ok_or_else(|| fail("data: a form key must be text".into()))?;
                let v = match &v {
                    Value::Table(nested) => FormValue::Pairs(
                        sorted_pairs(nested).map_err(|e| fail(format!("data.{k}: {e}")))?,
                    ),
                    other => FormValue::Text(
                        text(other).ok_or_else(|| fail(format!("data.{k}: not a text value")))?,
                    ),
                };
                fields.push((k, v));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            req.body = Some(Body::Form(fields));
        }
        Ok(other) => {
            let body = text(&other).ok_or_else(|| fail("data: not a string or table".into()))?;
            req.body = Some(Body::Raw(Bytes::from(body)));
        }
    }
    match t.raw_get::<Value>("timeout") {
        Ok(Value::Integer(ms)) if ms > 0 => req.timeout = Some(Duration::from_millis(ms as u64)),
        Ok(Value::Number(ms)) if ms > 0.0 && ms.is_finite() => {
            req.timeout = Some(Duration::from_millis(ms as u64))
        }
        _ => {}
    }
    Ok(req)
}

/// `{k = v}` with text keys and values, sorted by key.
fn sorted_pairs(t: &Table) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        match (text(&k), text(&v)) {
            (Some(k), Some(v)) => out.push((k, v)),
            _ => return Err("keys and values must be strings, numbers or booleans".into()),
        }
    }
    out.sort();
    Ok(out)
}

/// A scalar as the text curl would send: integral numbers without a fraction.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string_lossy()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => Some((*n as i64).to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_requests_become_http_requests() {
        let lua = Lua::new();
        let v: Value = lua
            .load(
                r#"return { url = "http://x/", header = { B = "2", A = 1 },
                            data = { z = "a b", n = 3, nested = { k = "v", a = true } },
                            timeout = 250 }"#,
            )
            .eval()
            .unwrap();
        let req = request_from_lua(&v).unwrap();
        assert_eq!(req.url, "http://x/");
        assert_eq!(
            req.headers,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        assert_eq!(req.timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            req.body.unwrap().encode(),
            Bytes::from("n=3&nested=a-true,k-v&z=a%20b")
        );
        let s: Value = lua.load(r#"return "http://y/""#).eval().unwrap();
        assert_eq!(request_from_lua(&s).unwrap(), HttpRequest::get("http://y/"));
        let bad: Value = lua.load("return { header = {} }").eval().unwrap();
        assert!(request_from_lua(&bad).unwrap_err().1.contains("no `url`"));
        assert!(request_from_lua(&Value::Boolean(true)).is_err());
    }

    #[test]
    fn the_handle_document_is_valid_bson() {
        let doc = handle_doc(7);
        assert_eq!(doc.len(), 16);
        assert_eq!(&doc[..4], &16i32.to_le_bytes());
        assert_eq!(doc[15], 0);
    }
}
