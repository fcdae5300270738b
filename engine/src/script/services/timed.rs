//! The natives behind the `=ticket` and `=route` service stages (`E.ticket_call`,
//! `E.route_call`, `E.service_tick`). Like index.so, a message for one of these stages is
//! routed like any stage message and reaches `P.posts.msg` on the service's owner core; the
//! prelude hands the command key (the id without `"<sign>:"`), the values and the sender's
//! address (`r` = its stage, `rp` = its process, and the cluster member it runs in when that
//! is another node) here. This module turns them into the service's command, runs it, and
//! returns the service's outputs as plain message descriptions `{s, p, n, i, r, rp, rn, v, k}`
//! (`n` / `rn`: the member of the addressee / of the reply address, absent on this node), which the prelude sends with its usual machinery, so
//! they reach the right stage in the right process. Keeping the sending in the prelude keeps a
//! single delivery path (`route` stays the one place receivers are chosen).
//!
//! Reply addresses: the services express them as `"<stage>:<message>"` (`ticket:@<lease>`,
//! `route:=`), while a message between stages carries only a reply *stage* and derives the
//! reply's message id from its own id (`a=ret` answers with `ret`). So an output whose
//! reply address is `stage:ret` is sent as `<key>=ret` with reply stage `stage`: a handler's
//! `stage.signal(nil, ...)` or return values then reach exactly that service command.
//!
//! After every call and every tick the owner's single timer is re-armed at the service's
//! next deadline (`node::timed`); when it fires, the prelude's `svc_tick` post calls
//! `E.service_tick`, so lease expiry, offer timeouts and keep-alive expiry need no traffic.
//!
//! Values travel as the engine-internal BSON of the packed values (`{n = count, ...}`), the
//! service keeps them as opaque bytes and they come back as the same Lua values.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mlua::{Lua, Table, Value};

use crate::node::runtime::with_current;
use crate::node::stats::ServiceStats;
use crate::node::timed::{TimedService, TimedSlot};
use crate::script::bson;
use crate::script::messaging::{INTERNAL_DECODE, INTERNAL_ENCODE};
use crate::script::natives::core;
use crate::service::route::{self, RouteCommand, RouteKey, RouteMessage, RouteOutput, SubChange};
use crate::service::ticket::{
    self, LeaseId, Outcome, TicketCommand, TicketKey, TicketMessage, TicketOutput,
};
use crate::service::{Payload, Requester};

pub fn register(lua: &Lua, e: &Table) -> mlua::Result<()> {
    e.set("ticket_call", lua.create_function(ticket_call)?)?;
    e.set("route_call", lua.create_function(route_call)?)?;
    e.set("service_tick", lua.create_function(service_tick)?)?;
    Ok(())
}

/// The arguments every call gets: stage index, command key, values, sender stage, process
/// and cluster member (nil: this node).
type CallArgs = (usize, String, Option<Table>, String, u32, Option<String>);

fn slot(stage: usize) -> mlua::Result<std::rc::Rc<std::cell::RefCell<TimedSlot>>> {
    core()?.timed_service(stage).ok_or_else(|| {
        mlua::Error::runtime(format!("service stage #{stage} is not served on this core"))
    })
}

/// Parses a message key and values into a service's command (`None`: nothing to do).
type Parse<C> = fn(&Lua, &str, &str, Option<&Table>) -> mlua::Result<Option<C>>;
/// Runs a command on the service, if the slot holds that kind of service.
type Run<C> = fn(&mut TimedService, Instant, Requester, C) -> Option<Outputs>;

/// One call into a timed service: parse (with no borrow held, the parser reads Lua values),
/// run, re-arm the service's timer, and hand the outputs to the prelude.
fn call<C>(lua: &Lua, args: CallArgs, parse: Parse<C>, run: Run<C>) -> mlua::Result<Table> {
    let (stage, key, values, sign, rp, node) = args;
    let slot = slot(stage)?;
    let own = service_sign(&slot);
    let Some(cmd) = parse(lua, &own, &key, values.as_ref())? else {
        return lua.create_table();
    };
    let now = Instant::now();
    let outs = run(
        &mut slot.borrow_mut().service,
        now,
        Requester::on_node(rp, sign, node),
        cmd,
    )
    .ok_or_else(|| mlua::Error::runtime(format!("stage #{stage} is another kind of service")))?;
    rearm(lua, stage, &slot, now)?;
    outputs(lua, outs)
}

/// `E.ticket_call(stage, key, values, sender_stage, sender_process, sender_member)` -> outputs.
fn ticket_call(lua: &Lua, args: CallArgs) -> mlua::Result<Table> {
    call(
        lua,
        args,
        ticket_command,
        |service, now, from, cmd| match service {
            TimedService::Ticket(t) => Some(Outputs::Ticket(t.handle(now, from, cmd))),
            _ => None,
        },
    )
}

/// `E.route_call(stage, key, values, sender_stage, sender_process, sender_member)` -> outputs.
fn route_call(lua: &Lua, args: CallArgs) -> mlua::Result<Table> {
    call(
        lua,
        args,
        route_command,
        |service, now, from, cmd| match service {
            TimedService::Route(r) => Some(Outputs::Route(r.handle(now, from, cmd))),
            _ => None,
        },
    )
}

/// `E.service_tick(stage, generation)` -> outputs: timer `generation` of the stage fired.
fn service_tick(lua: &Lua, (stage, generation): (usize, u64)) -> mlua::Result<Table> {
    let slot = slot(stage)?;
    let now = Instant::now();
    let outs = {
        let mut s = slot.borrow_mut();
        s.fired(generation);
        match &mut s.service {
            TimedService::Ticket(t) => Outputs::Ticket(t.tick(now)),
            TimedService::Route(r) => Outputs::Route(r.tick(now)),
        }
    };
    rearm(lua, stage, &slot, now)?;
    outputs(lua, outs)
}

fn service_sign(slot: &std::rc::Rc<std::cell::RefCell<TimedSlot>>) -> String {
    match &slot.borrow().service {
        TimedService::Ticket(t) => t.sign().to_string(),
        TimedService::Route(r) => r.sign().to_string(),
    }
}

/// Starts the owner core's timer when the service's next deadline needs one.
fn rearm(
    lua: &Lua,
    stage: usize,
    slot: &std::rc::Rc<std::cell::RefCell<TimedSlot>>,
    now: Instant,
) -> mlua::Result<()> {
    let Some((delay, generation)) = slot.borrow_mut().arm(now) else {
        return Ok(());
    };
    let m = lua.create_table()?;
    m.raw_set("t", stage)?;
    m.raw_set("g", generation)?;
    let mut out = BytesMut::new();
    bson::encode_document(lua, &m, &mut out, &INTERNAL_ENCODE)
        .map_err(|e| mlua::Error::runtime(e.to_string()))?;
    // A millisecond of slack: the timer wakes at or after the deadline, never just before.
    core()?.post_later(
        delay + Duration::from_millis(1),
        crate::node::post::PostKind::ServiceTick,
        out.freeze(),
    );
    Ok(())
}

// Lua -> command ------------------------------------------------------------------------------

fn arg(values: Option<&Table>, n: usize) -> mlua::Result<Value> {
    match values {
        Some(t) => t.raw_get(n),
        None => Ok(Value::Nil),
    }
}

/// The packed values as the service keeps them.
fn encode(lua: &Lua, values: Option<&Table>) -> mlua::Result<Payload> {
    let empty;
    let t = match values {
        Some(t) => t,
        None => {
            empty = lua.create_table()?;
            empty.raw_set("n", 0)?;
            &empty
        }
    };
    let mut out = BytesMut::new();
    bson::encode_document(lua, t, &mut out, &INTERNAL_ENCODE)
        .map_err(|e| mlua::Error::runtime(format!("cannot keep this value: {e}")))?;
    Ok(out.freeze())
}

/// One value, packed as `{n = 1, v}`.
fn encode_one(lua: &Lua, v: Value) -> mlua::Result<Payload> {
    let t = lua.create_table()?;
    t.raw_set(1, v)?;
    t.raw_set("n", 1)?;
    encode(lua, Some(&t))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.is_finite() => Some(n.trunc() as i64),
        Value::String(s) => s.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string_lossy()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Number(n) if n.fract() == 0.0 && n.is_finite() => Some((*n as i64).to_string()),
        _ => None,
    }
}

/// spec/services.md §3.3. None: nothing to do (logged).
fn ticket_command(
    lua: &Lua,
    sign: &str,
    key: &str,
    values: Option<&Table>,
) -> mlua::Result<Option<TicketCommand>> {
    let parsed = match ticket::parse_key(key) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("{e}");
            return Ok(None);
        }
    };
    let request_key = format!("{sign}:{key}");
    Ok(Some(match parsed {
        TicketKey::Request {
            category,
            callback,
            feedback,
        } => TicketCommand::Request {
            category: category.into(),
            callback: callback.into(),
            feedback: feedback.map(str::to_string),
            request_key,
            value: encode(lua, values)?,
        },
        TicketKey::Batch { category, feedback } => {
            let Value::Table(t) = arg(values, 1)? else {
                tracing::warn!("ticket `{key}`: a batch needs a table {{ callback = value }}");
                return Ok(None);
            };
            let mut entries = Vec::new();
            let mut userdata = None;
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                match text(&k) {
                    Some(k) if k.is_empty() => userdata = Some(encode_one(lua, v)?),
                    Some(k) => entries.push((k, encode_one(lua, v)?)),
                    None => {}
                }
            }
            // A Lua table has no order: sorted, so grants do not depend on the hash seed.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            TicketCommand::Batch {
                category: category.into(),
                feedback: feedback.map(str::to_string),
                request_key,
                entries,
                userdata,
            }
        }
        TicketKey::Broadcast { category } => TicketCommand::Broadcast {
            category: category.into(),
            value: encode(lua, values)?,
        },
        TicketKey::At { name } => {
            let first = arg(values, 1)?;
            // A lease-shaped name is always a lease (a dead one is ignored by the service),
            // never a category that happens to look like one.
            if let Some(lease) = LeaseId::from_name(name) {
                let Some(ms) = int(&first) else {
                    // A granted handler returning something other than a number.
                    tracing::debug!("ticket `{key}`: not a number of ms, ignored");
                    return Ok(None);
                };
                return Ok(Some(TicketCommand::Lease { lease, ms }));
            }
            // `(limit, close_ms)` or `{limit, close_ms}`.
            let (limit, close) = match &first {
                Value::Table(t) => (t.raw_get::<Value>(1)?, t.raw_get::<Value>(2)?),
                _ => (first.clone(), arg(values, 2)?),
            };
            let Some(limit) = int(&limit) else {
                tracing::warn!("ticket `{key}`: a category needs a limit");
                return Ok(None);
            };
            TicketCommand::Configure {
                category: name.into(),
                limit,
                close_after: int(&close)
                    .filter(|ms| *ms > 0)
                    .map(|ms| Duration::from_millis(ms.unsigned_abs())),
            }
        }
    }))
}

/// spec/services.md §4.2, §4.3. None: nothing to do (logged).
fn route_command(
    lua: &Lua,
    sign: &str,
    key: &str,
    values: Option<&Table>,
) -> mlua::Result<Option<RouteCommand>> {
    let parsed = match route::parse_key(key) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!("{e}");
            return Ok(None);
        }
    };
    let first = arg(values, 1)?;
    Ok(Some(match parsed {
        RouteKey::Control => match first {
            Value::Table(t) => {
                let mut changes = Vec::new();
                for pair in t.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    let Some(id) = text(&k) else { continue };
                    let change = match v {
                        // A Lua table cannot hold nil: an empty callback id removes.
                        Value::String(s) if s.as_bytes().is_empty() => SubChange::Remove,
                        Value::String(s) => SubChange::Add(s.to_string_lossy()),
                        Value::Boolean(on) => SubChange::Enable(on),
                        other => match int(&other) {
                            Some(ms) => {
                                SubChange::DisableFor(Duration::from_millis(ms.max(0) as u64))
                            }
                            None => continue,
                        },
                    };
                    changes.push((id, change));
                }
                changes.sort_by(|a, b| a.0.cmp(&b.0));
                RouteCommand::Subscribe(changes)
            }
            Value::Nil => RouteCommand::Unsubscribe,
            Value::Boolean(_) => RouteCommand::KeepAlive,
            other => match int(&other) {
                Some(ms) => RouteCommand::Pause(Duration::from_millis(ms.max(0) as u64)),
                None => RouteCommand::KeepAlive,
            },
        },
        RouteKey::Claim => match text(&first) {
            Some(token) => {
                with_current(|c| ServiceStats::inc(&c.stats.services.route_claims, 1));
                RouteCommand::Claim { token }
            }
            None => return Ok(None),
        },
        RouteKey::Publish(targets) => RouteCommand::Publish {
            key: format!("{sign}:{key}"),
            targets,
            value: encode(lua, values)?,
        },
    }))
}

// Outputs -> Lua ------------------------------------------------------------------------------

enum Outputs {
    Ticket(Vec<TicketOutput>),
    Route(Vec<RouteOutput>),
}

/// A reply address: stage, process (`None`: the service's own), member (`None`: this node).
type Reply = (String, Option<u32>, Option<String>);

/// One message for the prelude to send.
struct Out {
    to: Requester,
    id: String,
    /// Reply stage, its process (`None`: the service's) and its cluster member (`None`: this
    /// node).
    reply: Option<Reply>,
    values: Table,
    ticket: Option<String>,
}

fn outputs(lua: &Lua, outs: Outputs) -> mlua::Result<Table> {
    let list = lua.create_table()?;
    let items: Vec<Out> = match outs {
        Outputs::Ticket(v) => v
            .into_iter()
            .map(|o| ticket_out(lua, o))
            .collect::<mlua::Result<_>>()?,
        Outputs::Route(v) => v
            .into_iter()
            .map(|o| route_out(lua, o))
            .collect::<mlua::Result<_>>()?,
    };
    for (n, o) in items.into_iter().enumerate() {
        let t = lua.create_table()?;
        t.raw_set("s", o.to.sign)?;
        t.raw_set("p", o.to.process)?;
        t.raw_set("n", o.to.node)?;
        t.raw_set("i", o.id)?;
        if let Some((stage, process, node)) = o.reply {
            t.raw_set("r", stage)?;
            t.raw_set("rp", process)?;
            t.raw_set("rn", node)?;
        }
        t.raw_set("v", o.values)?;
        t.raw_set("k", o.ticket)?;
        list.raw_set(n + 1, t)?;
    }
    Ok(list)
}

/// A reply address `"<stage>:<ret>"` folded into the message: id `<key>=<ret>` (replacing a
/// `=ret` the key already had), reply stage `<stage>` of the service's own process.
fn with_reply(key: &str, reply_to: &str) -> (String, Option<Reply>) {
    let base = key.split_once('=').map_or(key, |(b, _)| b);
    match reply_to.split_once(':') {
        Some((stage, ret)) => (
            format!("{base}={ret}"),
            Some((stage.to_string(), None, None)),
        ),
        None => (key.to_string(), None),
    }
}

fn decode(lua: &Lua, payload: &Bytes) -> mlua::Result<Table> {
    if payload.is_empty() {
        let t = lua.create_table()?;
        t.raw_set("n", 0)?;
        return Ok(t);
    }
    bson::decode_document(lua, payload, &INTERNAL_DECODE)
        .map_err(|e| mlua::Error::runtime(format!("service value unreadable: {e}")))
}

/// `{n = ..., first..., rest of payload...}`.
fn packed(lua: &Lua, first: Vec<Value>, rest: Option<&Bytes>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let mut n = 0;
    for v in first {
        n += 1;
        t.raw_set(n, v)?;
    }
    if let Some(rest) = rest {
        let r = decode(lua, rest)?;
        let count: i64 = r.raw_get::<Option<i64>>("n")?.unwrap_or(r.raw_len() as i64);
        for i in 1..=count {
            n += 1;
            t.raw_set(n, r.raw_get::<Value>(i)?)?;
        }
    }
    t.raw_set("n", n)?;
    Ok(t)
}

fn outcome(lua: &Lua, r: &Outcome) -> mlua::Result<Value> {
    Ok(match r {
        Ok(id) => Value::String(lua.create_string(id.to_string())?),
        Err(_) => Value::Boolean(false),
    })
}

fn str_value(lua: &Lua, s: &str) -> mlua::Result<Value> {
    Ok(Value::String(lua.create_string(s)?))
}

fn ticket_out(lua: &Lua, o: TicketOutput) -> mlua::Result<Out> {
    let mut out = Out {
        id: o.key.clone(),
        to: o.to,
        reply: None,
        values: lua.create_table()?,
        ticket: None,
    };
    match o.message {
        TicketMessage::Grant {
            lease,
            reply_to,
            value,
        } => {
            with_current(|c| ServiceStats::inc(&c.stats.services.ticket_grants, 1));
            (out.id, out.reply) = with_reply(&o.key, &reply_to);
            out.values = decode(lua, &value)?;
            out.ticket = Some(lease.to_string());
        }
        TicketMessage::Feedback {
            request_key,
            result,
        } => {
            let refused = u64::from(result.is_err());
            with_current(|c| ServiceStats::inc(&c.stats.services.ticket_refusals, refused));
            let args = vec![str_value(lua, &request_key)?, outcome(lua, &result)?];
            out.values = packed(lua, args, None)?;
        }
        TicketMessage::BatchFeedback {
            request_key,
            results,
            userdata,
        } => {
            let refused = results.iter().filter(|(_, r)| r.is_err()).count() as u64;
            with_current(|c| ServiceStats::inc(&c.stats.services.ticket_refusals, refused));
            let map = lua.create_table()?;
            for (cb, r) in &results {
                map.raw_set(cb.as_str(), outcome(lua, r)?)?;
            }
            if let Some(u) = userdata {
                map.raw_set("", decode(lua, &u)?.raw_get::<Value>(1)?)?;
            }
            let args = vec![str_value(lua, &request_key)?, Value::Table(map)];
            out.values = packed(lua, args, None)?;
        }
        TicketMessage::Cancel { leases } => {
            let n = leases.len() as u64;
            with_current(|c| ServiceStats::inc(&c.stats.services.ticket_expiries, n));
            let map = lua.create_table()?;
            for (id, cb) in leases {
                map.raw_set(id.to_string(), cb)?;
            }
            out.values = packed(
                lua,
                vec![str_value(lua, "cancel")?, Value::Table(map)],
                None,
            )?;
        }
        TicketMessage::Broadcast { value } => out.values = decode(lua, &value)?,
    }
    Ok(out)
}

fn route_out(lua: &Lua, o: RouteOutput) -> mlua::Result<Out> {
    let mut out = Out {
        id: o.key.clone(),
        to: o.to,
        reply: None,
        values: lua.create_table()?,
        ticket: None,
    };
    match o.message {
        RouteMessage::Offer {
            original_key,
            token,
            reply_to,
        } => {
            with_current(|c| ServiceStats::inc(&c.stats.services.route_offers, 1));
            // `<sub>:route:@` has no `=` of its own, so the id becomes `<sub>:route:@==`:
            // the handler found is `route:@`, the answer goes to `<route>:=`.
            (out.id, out.reply) = with_reply(&o.key, &reply_to);
            let args = vec![str_value(lua, &original_key)?, str_value(lua, &token)?];
            out.values = packed(lua, args, None)?;
        }
        RouteMessage::Deliver {
            original_key,
            value,
            reply_to,
        } => {
            // The publisher is the reply address: the taker's answer goes straight back.
            out.reply = Some((reply_to.sign, Some(reply_to.process), reply_to.node));
            out.values = packed(lua, vec![str_value(lua, &original_key)?], Some(&value))?;
        }
        RouteMessage::Fail {
            original_key,
            value,
        } => {
            with_current(|c| ServiceStats::inc(&c.stats.services.route_failures, 1));
            out.values = packed(lua, vec![str_value(lua, &original_key)?], Some(&value))?;
        }
    }
    Ok(out)
}
