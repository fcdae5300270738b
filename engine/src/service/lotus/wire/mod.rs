//! The commands a lotus client sends and the messages it receives, independent of the wire
//! that carries them (spec/lotus.md §3, §9.6). Two wires exist: `compat` (the original lotus:
//! 2-byte big-endian length + JSON, a bare status line after login) and `v1` (4-byte
//! big-endian length + MessagePack `[kind, rid, name, args]`). Both decode into one
//! [`Request`] and encode from one [`Outgoing`], so the server behind them is one program.
//!
//! Values are MessagePack values (`rmpv::Value`) on both wires; the compat wire converts its
//! JSON at the edge. Every parameter is checked here, before anything is built from it: a
//! missing or mistyped parameter is a [`WireError`] naming it, which costs the client one
//! request (an `err` reply when it asked with a request id), never the connection.

pub mod compat;
pub mod v1;

use rmpv::Value;

use super::channel::{Query, DEFAULT_FROM_LIMIT};

/// A decoded request: the client's request id (0 = no reply wanted) and the command.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub rid: u64,
    pub command: Command,
}

/// Every command of both wires. `Call`, `Get`, `ChannelHistory`, `SchemaList` and `Ping` are
/// v1's additions (spec §9.6); the compat wire accepts them too, under the same names.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Login {
        account: String,
        password: String,
        node: String,
    },
    /// A schema table `{typename, init?, handlers?, callbacks?, unique?}`.
    Register {
        schema: Value,
    },
    InitState {
        typename: String,
        statename: String,
        value: Option<Value>,
        /// v1: reply `state_exists` instead of ignoring an existing name.
        strict: bool,
    },
    UpdateState {
        statename: String,
        keys: Vec<Value>,
        value: Value,
    },
    /// Run a handler; `reply` = `call` (return its values) rather than `execute_state`.
    Execute {
        statename: String,
        funcname: String,
        params: Vec<Value>,
        reply: bool,
    },
    Get {
        statename: String,
        keys: Vec<Value>,
    },
    Subscribe {
        channel: String,
        /// Resume: replay retained messages with `id >= from` before live ones.
        from: Option<u64>,
    },
    Unsubscribe {
        channel: String,
    },
    Publish {
        channel: String,
        msg: Value,
    },
    DeleteChannel {
        channel: String,
    },
    ChannelHistory {
        channel: String,
        query: Query,
    },
    SchemaList,
    Ping,
}

impl Command {
    /// The wire name, for replies and log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Login { .. } => "login",
            Command::Register { .. } => "register",
            Command::InitState { .. } => "init_state",
            Command::UpdateState { .. } => "update_state",
            Command::Execute { reply: false, .. } => "execute_state",
            Command::Execute { reply: true, .. } => "call",
            Command::Get { .. } => "get",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::DeleteChannel { .. } => "delete_channel",
            Command::ChannelHistory { .. } => "channel_history",
            Command::SchemaList => "schema_list",
            Command::Ping => "ping",
        }
    }
}

/// Why a request was refused before it ran; `code` is one of spec §9.6's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub code: &'static str,
    pub message: String,
}

impl WireError {
    pub fn bad_frame(message: impl Into<String>) -> WireError {
        WireError {
            code: "bad_frame",
            message: message.into(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The value of key `key` in a MessagePack map (string keys only).
pub fn field<'a>(params: &'a Value, key: &str) -> Option<&'a Value> {
    match params {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_nil()),
        _ => None,
    }
}

fn string(params: &Value, key: &str) -> Result<String, WireError> {
    match field(params, key) {
        Some(Value::String(s)) => s
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| WireError::bad_frame(format!("`{key}` is not valid UTF-8"))),
        Some(other) => Err(WireError::bad_frame(format!(
            "`{key}` must be a string, found {}",
            kind(other)
        ))),
        None => Err(WireError::bad_frame(format!("`{key}` is missing"))),
    }
}

fn array(params: &Value, key: &str) -> Result<Vec<Value>, WireError> {
    match field(params, key) {
        Some(Value::Array(a)) => Ok(a.clone()),
        // JSON encodes an empty table as `[]` or `{}`: both mean "no elements".
        Some(Value::Map(m)) if m.is_empty() => Ok(Vec::new()),
        None => Ok(Vec::new()),
        Some(other) => Err(WireError::bad_frame(format!(
            "`{key}` must be an array, found {}",
            kind(other)
        ))),
    }
}

fn uint(v: &Value, what: &str) -> Result<u64, WireError> {
    match v {
        Value::Integer(i) => i
            .as_u64()
            .ok_or_else(|| WireError::bad_frame(format!("`{what}` must not be negative"))),
        // JSON numbers from scripts may arrive as floats with integral values.
        Value::F64(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 2f64.powi(63) => Ok(*f as u64),
        other => Err(WireError::bad_frame(format!(
            "`{what}` must be an integer, found {}",
            kind(other)
        ))),
    }
}

/// `from` in `subscribe` and `channel_history`: `{id = k}` (the spec's form) or a bare `k`.
fn from_id(v: &Value) -> Result<u64, WireError> {
    match field(v, "id") {
        Some(id) => uint(id, "from.id"),
        None if matches!(v, Value::Map(_)) => Err(WireError::bad_frame("`from.id` is missing")),
        None => uint(v, "from"),
    }
}

/// A short name of a value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) | Value::F32(_) | Value::F64(_) => "number",
        Value::String(_) => "string",
        Value::Binary(_) => "binary",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(..) => "extension",
    }
}

/// Builds the command `name` from its parameter map (the same names on both wires).
pub fn command(name: &str, params: &Value) -> Result<Command, WireError> {
    let p = params;
    Ok(match name {
        "login" => Command::Login {
            account: string(p, "account")?,
            password: string(p, "password")?,
            node: string(p, "name").or_else(|_| string(p, "node"))?,
        },
        "register" => {
            let schema = field(p, "schema")
                .cloned()
                .ok_or_else(|| WireError::bad_frame("`schema` is missing"))?;
            if !matches!(schema, Value::Map(_)) {
                return Err(WireError::bad_frame(format!(
                    "`schema` must be a table, found {}",
                    kind(&schema)
                )));
            }
            string(&schema, "typename")
                .map_err(|e| WireError::bad_frame(format!("schema: {}", e.message)))?;
            Command::Register { schema }
        }
        "init_state" => Command::InitState {
            typename: string(p, "typename")?,
            statename: string(p, "statename")?,
            value: field(p, "value").cloned(),
            strict: matches!(field(p, "strict"), Some(Value::Boolean(true))),
        },
        "update_state" => Command::UpdateState {
            statename: string(p, "statename")?,
            keys: array(p, "keys")?,
            value: field(p, "value").cloned().unwrap_or(Value::Nil),
        },
        "execute_state" | "call" => Command::Execute {
            statename: string(p, "statename")?,
            funcname: string(p, "funcname")?,
            params: array(p, "params")?,
            reply: name == "call",
        },
        "get" => Command::Get {
            statename: string(p, "statename")?,
            keys: array(p, "keys")?,
        },
        "subscribe" => Command::Subscribe {
            channel: string(p, "channel")?,
            from: field(p, "from").map(from_id).transpose()?,
        },
        "unsubscribe" => Command::Unsubscribe {
            channel: string(p, "channel")?,
        },
        "publish" => Command::Publish {
            channel: string(p, "channel")?,
            msg: match field(p, "args") {
                Some(Value::Array(args)) => Value::Array(args.clone()),
                Some(other) => {
                    return Err(WireError::bad_frame(format!(
                        "`args` must be an array, found {}",
                        kind(other)
                    )))
                }
                None => Value::Array(vec![field(p, "msg").cloned().unwrap_or(Value::Nil)]),
            },
        },
        "delete_channel" => Command::DeleteChannel {
            channel: string(p, "channel")?,
        },
        "channel_history" => {
            let channel = string(p, "channel")?;
            let limit = field(p, "limit")
                .map(|l| uint(l, "limit"))
                .transpose()?
                .map_or(DEFAULT_FROM_LIMIT, |l| l.min(usize::MAX as u64) as usize);
            let query = match (field(p, "last"), field(p, "from")) {
                (Some(n), None) => Query::Last(uint(n, "last")?.min(usize::MAX as u64) as usize),
                (None, Some(f)) => Query::From {
                    id: from_id(f)?,
                    limit,
                },
                _ => {
                    return Err(WireError::bad_frame(
                        "channel_history takes exactly one of `last` and `from`",
                    ))
                }
            };
            Command::ChannelHistory { channel, query }
        }
        "schema_list" => Command::SchemaList,
        "ping" => Command::Ping,
        other => {
            return Err(WireError {
                code: "unknown_command",
                message: format!("unknown command `{other}`"),
            })
        }
    })
}

/// What the server sends: replies to requests and pushed events.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// The request `rid` (named `name`) succeeded with `result`.
    Ok {
        rid: u64,
        name: String,
        result: Value,
    },
    /// The request `rid` failed with an error code and details (`message`, and e.g.
    /// `handler` for `compile_error`).
    Err {
        rid: u64,
        code: String,
        detail: Value,
    },
    /// A channel delivery (spec §6.5): its id in the channel's epoch, and the message — the
    /// array of the publish's arguments (a node's publish has one, a handler's
    /// `ctx.publish(ch, ...)` any number), as the original's `msg` always was (§3.4).
    ChannelMessage {
        channel: String,
        epoch: u64,
        id: u64,
        msg: Value,
    },
    /// The channel was deleted; the subscription is gone (spec §6.4).
    ChannelDeleted { channel: String },
    /// A resume started before the oldest retained message: the client missed messages
    /// before `first_id` (sent ahead of the replay).
    ChannelTruncated {
        channel: String,
        epoch: u64,
        first_id: u64,
    },
    /// A history reply (spec §6.5).
    ChannelHistory {
        rid: u64,
        channel: String,
        history: super::channel::History<Value>,
    },
}

/// `{k1 = v1, ...}` with string keys.
pub fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

impl Outgoing {
    /// The request id a reply answers (`None` for events and for the history reply, whose
    /// body carries it already).
    pub fn rid(&self) -> Option<u64> {
        match self {
            Outgoing::Ok { rid, .. } | Outgoing::Err { rid, .. } => Some(*rid),
            _ => None,
        }
    }

    /// The event/reply as the map both wires carry in their own way: `type` names it.
    pub fn body(&self) -> Value {
        match self {
            Outgoing::Ok { name, result, .. } => map([
                ("type", Value::from(name.as_str())),
                ("result", result.clone()),
            ]),
            Outgoing::Err { code, detail, .. } => map([
                ("type", Value::from("error")),
                ("code", Value::from(code.as_str())),
                ("detail", detail.clone()),
            ]),
            Outgoing::ChannelMessage {
                channel,
                epoch,
                id,
                msg,
            } => map([
                ("type", Value::from("channel_message")),
                ("channel", Value::from(channel.as_str())),
                ("epoch", Value::from(*epoch)),
                ("id", Value::from(*id)),
                ("msg", msg.clone()),
            ]),
            Outgoing::ChannelDeleted { channel } => map([
                ("type", Value::from("channel_deleted")),
                ("channel", Value::from(channel.as_str())),
            ]),
            Outgoing::ChannelTruncated {
                channel,
                epoch,
                first_id,
            } => map([
                ("type", Value::from("channel_truncated")),
                ("channel", Value::from(channel.as_str())),
                ("epoch", Value::from(*epoch)),
                ("first_id", Value::from(*first_id)),
            ]),
            Outgoing::ChannelHistory {
                rid,
                channel,
                history,
            } => map([
                ("type", Value::from("channel_history")),
                ("rid", Value::from(*rid)),
                ("channel", Value::from(channel.as_str())),
                ("epoch", Value::from(history.epoch)),
                ("first_id", Value::from(history.first_id)),
                ("last_id", Value::from(history.last_id)),
                ("truncated", Value::from(history.truncated)),
                (
                    "items",
                    Value::Array(
                        history
                            .items
                            .iter()
                            .map(|(id, m)| map([("id", Value::from(*id)), ("msg", m.clone())]))
                            .collect(),
                    ),
                ),
            ]),
        }
    }
}

#[cfg(test)]
mod tests;
