//! What one core's lotus sends another (`PostKind::Lotus`): plain data encoded as
//! MessagePack, never Lua values, so a core only ever touches its own Lua state. A request
//! travels as the frame body the client sent (re-decoded by the owner with the same wire's
//! decoder) or, from a handler's `ctx`, as a v1 request body the server built.

use rmpv::Value;

use super::store::{Record, Tail, Waiter};
use super::value;
use crate::service::lotus::channel::History;

/// Which wire a connection speaks (what its replies are encoded for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    V1,
    Compat,
}

impl Wire {
    fn code(self) -> u64 {
        match self {
            Wire::V1 => 0,
            Wire::Compat => 1,
        }
    }

    fn from_code(v: &Value) -> Result<Wire, String> {
        match v.as_u64() {
            Some(0) => Ok(Wire::V1),
            Some(1) => Ok(Wire::Compat),
            _ => Err("bad wire code".into()),
        }
    }
}

/// One inter-core lotus message.
#[derive(Debug, Clone, PartialEq)]
pub enum Post {
    /// A request for the core that owns what it names (a state or a channel). `conn` 0: from
    /// a handler, nobody to answer.
    Req {
        conn: u64,
        wire: Wire,
        project: String,
        body: Vec<u8>,
    },
    /// A registered schema, for every core.
    Schema {
        project: String,
        typename: String,
        schema: Value,
    },
    /// Core `core` gained its first (`+`) or lost its last (`-`) subscriber of a channel;
    /// `resume` asks the owner to replay from an id to one connection first.
    Interest {
        project: String,
        channel: String,
        core: usize,
        add: bool,
        resume: Option<(u64, Wire, u64)>,
    },
    /// A channel message for the subscribers on the receiving core.
    Deliver {
        project: String,
        channel: String,
        epoch: u64,
        id: u64,
        msg: Value,
    },
    /// The replay that answers a resume, for one connection of the receiving core; the
    /// connection is live from then on.
    Replay {
        project: String,
        channel: String,
        conn: u64,
        history: History<Value>,
    },
    /// The channel is gone: its subscribers on the receiving core are told and dropped.
    Deleted { project: String, channel: String },
    /// One frame for a connection of the receiving core.
    Out { conn: u64, frame: Vec<u8> },
    /// A state's timer is due (posted by the owner core to itself).
    Timer {
        project: String,
        state: String,
        name: String,
        generation: u64,
    },
    /// Time to hand the dirty states to the store (posted by a core to itself).
    Flush,
    /// The store thread's answer to one of this core's commands.
    Stored(Stored),
    /// Connection `conn` logged in as `project.node` (`add`) or ended; sent to the core that
    /// keeps who holds that identity (spec §3.2 step 5: a second login kicks the first).
    Login {
        project: String,
        node: String,
        conn: u64,
        add: bool,
    },
    /// Connection `conn` of the receiving core lost its identity to a newer login: close it.
    Kick { conn: u64 },
}

/// What the store thread answers (`store::Cmd`).
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A register's schema is stored (or `error` says why not).
    Schema {
        waiter: Waiter,
        project: String,
        typename: String,
        schema: Value,
        error: Option<String>,
    },
    /// A flush is done; these states were not written and stay dirty.
    Flushed { failed: Vec<(String, String)> },
    /// A `ctx.save()` write is done (or `error` says why not); `token` names the reply
    /// that waits for it.
    Saved {
        token: u64,
        project: String,
        name: String,
        error: Option<String>,
    },
    /// A state's lazy load: the record and its type's schema, if stored.
    State {
        project: String,
        name: String,
        found: Option<(Record, Value)>,
        error: Option<String>,
    },
    /// A channel's lazy load: `(epoch, last_id, newest items)`, if stored.
    Channel {
        project: String,
        channel: String,
        found: Option<Tail>,
        error: Option<String>,
    },
}

fn opt_text(v: &Option<String>) -> Value {
    v.as_deref().map_or(Value::Nil, Value::from)
}

fn opt_from(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

impl Stored {
    fn value(&self) -> Value {
        Value::Array(match self {
            Stored::Schema {
                waiter,
                project,
                typename,
                schema,
                error,
            } => vec![
                s("schema"),
                Value::from(waiter.core as u64),
                Value::from(waiter.conn),
                Value::from(waiter.wire.code()),
                Value::from(waiter.rid),
                s(project),
                s(typename),
                schema.clone(),
                opt_text(error),
            ],
            Stored::Flushed { failed } => vec![
                s("flushed"),
                Value::Array(
                    failed
                        .iter()
                        .map(|(p, n)| Value::Array(vec![s(p), s(n)]))
                        .collect(),
                ),
            ],
            Stored::Saved {
                token,
                project,
                name,
                error,
            } => vec![
                s("saved"),
                Value::from(*token),
                s(project),
                s(name),
                opt_text(error),
            ],
            Stored::State {
                project,
                name,
                found,
                error,
            } => vec![
                s("state"),
                s(project),
                s(name),
                match found {
                    Some((r, schema)) => Value::Array(vec![
                        s(&r.typename),
                        Value::from(r.schema_hash),
                        Value::from(r.rev),
                        Value::Binary(r.data.clone()),
                        schema.clone(),
                    ]),
                    None => Value::Nil,
                },
                opt_text(error),
            ],
            Stored::Channel {
                project,
                channel,
                found,
                error,
            } => vec![
                s("channel"),
                s(project),
                s(channel),
                match found {
                    Some((epoch, last, items)) => Value::Array(vec![
                        Value::from(*epoch),
                        Value::from(*last),
                        Value::Array(
                            items
                                .iter()
                                .map(|(id, m)| Value::Array(vec![Value::from(*id), m.clone()]))
                                .collect(),
                        ),
                    ]),
                    None => Value::Nil,
                },
                opt_text(error),
            ],
        })
    }

    fn from_value(v: Option<&Value>) -> Result<Stored, String> {
        let Some(Value::Array(a)) = v else {
            return Err("expected a store answer".into());
        };
        let at = |i: usize| a.get(i);
        Ok(match a.first().and_then(Value::as_str) {
            Some("schema") => Stored::Schema {
                waiter: Waiter {
                    core: uint(at(1))? as usize,
                    conn: uint(at(2))?,
                    wire: Wire::from_code(at(3).unwrap_or(&Value::Nil))?,
                    rid: uint(at(4))?,
                },
                project: text(at(5))?,
                typename: text(at(6))?,
                schema: at(7).cloned().unwrap_or(Value::Nil),
                error: opt_from(at(8)),
            },
            Some("flushed") => Stored::Flushed {
                failed: match at(1) {
                    Some(Value::Array(l)) => l
                        .iter()
                        .map(|x| match x {
                            Value::Array(pn) => Ok((text(pn.first())?, text(pn.get(1))?)),
                            _ => Err("bad flushed item".to_string()),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => Vec::new(),
                },
            },
            Some("saved") => Stored::Saved {
                token: uint(at(1))?,
                project: text(at(2))?,
                name: text(at(3))?,
                error: opt_from(at(4)),
            },
            Some("state") => Stored::State {
                project: text(at(1))?,
                name: text(at(2))?,
                found: match at(3) {
                    Some(Value::Array(r)) => Some((
                        Record {
                            typename: text(r.first())?,
                            schema_hash: uint(r.get(1))?,
                            rev: uint(r.get(2))?,
                            data: bin(r.get(3))?,
                        },
                        r.get(4).cloned().unwrap_or(Value::Nil),
                    )),
                    _ => None,
                },
                error: opt_from(at(4)),
            },
            Some("channel") => Stored::Channel {
                project: text(at(1))?,
                channel: text(at(2))?,
                found: match at(3) {
                    Some(Value::Array(c)) => Some((
                        uint(c.first())?,
                        uint(c.get(1))?,
                        match c.get(2) {
                            Some(Value::Array(items)) => items
                                .iter()
                                .map(|it| match it {
                                    Value::Array(pair) if pair.len() == 2 => {
                                        Ok((uint(pair.first())?, pair[1].clone()))
                                    }
                                    _ => Err("bad channel item".to_string()),
                                })
                                .collect::<Result<_, _>>()?,
                            _ => Vec::new(),
                        },
                    )),
                    _ => None,
                },
                error: opt_from(at(4)),
            },
            other => return Err(format!("unknown store answer {other:?}")),
        })
    }
}

fn s(v: &str) -> Value {
    Value::from(v)
}

fn text(v: Option<&Value>) -> Result<String, String> {
    v.and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "expected a string".to_string())
}

fn uint(v: Option<&Value>) -> Result<u64, String> {
    v.and_then(Value::as_u64)
        .ok_or_else(|| "expected an integer".to_string())
}

fn bin(v: Option<&Value>) -> Result<Vec<u8>, String> {
    match v {
        Some(Value::Binary(b)) => Ok(b.clone()),
        _ => Err("expected bytes".into()),
    }
}

fn history_value(h: &History<Value>) -> Value {
    Value::Array(vec![
        Value::from(h.epoch),
        Value::from(h.first_id),
        Value::from(h.last_id),
        Value::from(h.truncated),
        Value::Array(
            h.items
                .iter()
                .map(|(id, m)| Value::Array(vec![Value::from(*id), m.clone()]))
                .collect(),
        ),
    ])
}

fn history_from(v: Option<&Value>) -> Result<History<Value>, String> {
    let Some(Value::Array(a)) = v else {
        return Err("expected a history".into());
    };
    let items = match a.get(4) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|it| match it {
                Value::Array(pair) if pair.len() == 2 => Ok((uint(pair.first())?, pair[1].clone())),
                _ => Err("bad history item".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("expected history items".into()),
    };
    Ok(History {
        epoch: uint(a.first())?,
        first_id: uint(a.get(1))?,
        last_id: uint(a.get(2))?,
        truncated: a.get(3).and_then(Value::as_bool).unwrap_or(false),
        items,
    })
}

impl Post {
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            Post::Req {
                conn,
                wire,
                project,
                body,
            } => vec![
                s("req"),
                Value::from(*conn),
                Value::from(wire.code()),
                s(project),
                Value::Binary(body.clone()),
            ],
            Post::Schema {
                project,
                typename,
                schema,
            } => vec![s("schema"), s(project), s(typename), schema.clone()],
            Post::Interest {
                project,
                channel,
                core,
                add,
                resume,
            } => {
                let resume = match resume {
                    Some((conn, wire, from)) => Value::Array(vec![
                        Value::from(*conn),
                        Value::from(wire.code()),
                        Value::from(*from),
                    ]),
                    None => Value::Nil,
                };
                vec![
                    s("interest"),
                    s(project),
                    s(channel),
                    Value::from(*core as u64),
                    Value::from(*add),
                    resume,
                ]
            }
            Post::Deliver {
                project,
                channel,
                epoch,
                id,
                msg,
            } => vec![
                s("deliver"),
                s(project),
                s(channel),
                Value::from(*epoch),
                Value::from(*id),
                msg.clone(),
            ],
            Post::Replay {
                project,
                channel,
                conn,
                history,
            } => vec![
                s("replay"),
                s(project),
                s(channel),
                Value::from(*conn),
                history_value(history),
            ],
            Post::Deleted { project, channel } => vec![s("deleted"), s(project), s(channel)],
            Post::Out { conn, frame } => {
                vec![s("out"), Value::from(*conn), Value::Binary(frame.clone())]
            }
            Post::Timer {
                project,
                state,
                name,
                generation,
            } => vec![
                s("timer"),
                s(project),
                s(state),
                s(name),
                Value::from(*generation),
            ],
            Post::Flush => vec![s("flush")],
            Post::Stored(stored) => vec![s("stored"), stored.value()],
            Post::Login {
                project,
                node,
                conn,
                add,
            } => vec![
                s("login"),
                s(project),
                s(node),
                Value::from(*conn),
                Value::from(*add),
            ],
            Post::Kick { conn } => vec![s("kick"), Value::from(*conn)],
        };
        value::encode(&Value::Array(v))
    }

    pub fn decode(bytes: &[u8]) -> Result<Post, String> {
        let Value::Array(a) = value::decode(bytes)? else {
            return Err("a lotus post is an array".into());
        };
        let at = |i: usize| a.get(i);
        Ok(match a.first().and_then(Value::as_str) {
            Some("req") => Post::Req {
                conn: uint(at(1))?,
                wire: Wire::from_code(at(2).unwrap_or(&Value::Nil))?,
                project: text(at(3))?,
                body: bin(at(4))?,
            },
            Some("schema") => Post::Schema {
                project: text(at(1))?,
                typename: text(at(2))?,
                schema: at(3).cloned().unwrap_or(Value::Nil),
            },
            Some("interest") => Post::Interest {
                project: text(at(1))?,
                channel: text(at(2))?,
                core: uint(at(3))? as usize,
                add: at(4).and_then(Value::as_bool).unwrap_or(false),
                resume: match at(5) {
                    Some(Value::Array(r)) if r.len() == 3 => {
                        Some((uint(r.first())?, Wire::from_code(&r[1])?, uint(r.get(2))?))
                    }
                    _ => None,
                },
            },
            Some("deliver") => Post::Deliver {
                project: text(at(1))?,
                channel: text(at(2))?,
                epoch: uint(at(3))?,
                id: uint(at(4))?,
                msg: at(5).cloned().unwrap_or(Value::Nil),
            },
            Some("replay") => Post::Replay {
                project: text(at(1))?,
                channel: text(at(2))?,
                conn: uint(at(3))?,
                history: history_from(at(4))?,
            },
            Some("deleted") => Post::Deleted {
                project: text(at(1))?,
                channel: text(at(2))?,
            },
            Some("out") => Post::Out {
                conn: uint(at(1))?,
                frame: bin(at(2))?,
            },
            Some("timer") => Post::Timer {
                project: text(at(1))?,
                state: text(at(2))?,
                name: text(at(3))?,
                generation: uint(at(4))?,
            },
            Some("flush") => Post::Flush,
            Some("stored") => Post::Stored(Stored::from_value(at(1))?),
            Some("login") => Post::Login {
                project: text(at(1))?,
                node: text(at(2))?,
                conn: uint(at(3))?,
                add: at(4).and_then(Value::as_bool).unwrap_or(false),
            },
            Some("kick") => Post::Kick { conn: uint(at(1))? },
            other => return Err(format!("unknown lotus post {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_post_round_trips() {
        let posts = [
            Post::Req {
                conn: 7,
                wire: Wire::Compat,
                project: "p".into(),
                body: b"{}".to_vec(),
            },
            Post::Schema {
                project: "p".into(),
                typename: "t".into(),
                schema: Value::from("x"),
            },
            Post::Interest {
                project: "p".into(),
                channel: "c".into(),
                core: 3,
                add: true,
                resume: Some((9, Wire::V1, 4)),
            },
            Post::Deliver {
                project: "p".into(),
                channel: "c".into(),
                epoch: 2,
                id: 5,
                msg: Value::Array(vec![Value::from(1)]),
            },
            Post::Replay {
                project: "p".into(),
                channel: "c".into(),
                conn: 9,
                history: History {
                    epoch: 2,
                    first_id: 3,
                    last_id: 4,
                    truncated: true,
                    items: vec![(3, Value::from("a")), (4, Value::from("b"))],
                },
            },
            Post::Deleted {
                project: "p".into(),
                channel: "c".into(),
            },
            Post::Out {
                conn: 1,
                frame: vec![1, 2],
            },
            Post::Timer {
                project: "p".into(),
                state: "s".into(),
                name: "n".into(),
                generation: 8,
            },
            Post::Flush,
            Post::Login {
                project: "p".into(),
                node: "gate".into(),
                conn: 9,
                add: true,
            },
            Post::Kick { conn: 9 },
            Post::Stored(Stored::Schema {
                waiter: Waiter {
                    core: 1,
                    conn: 2,
                    wire: Wire::V1,
                    rid: 3,
                },
                project: "p".into(),
                typename: "t".into(),
                schema: Value::from(1),
                error: Some("down".into()),
            }),
            Post::Stored(Stored::Flushed {
                failed: vec![("p".into(), "s".into())],
            }),
            Post::Stored(Stored::Saved {
                token: 7,
                project: "p".into(),
                name: "s".into(),
                error: Some("down".into()),
            }),
            Post::Stored(Stored::State {
                project: "p".into(),
                name: "s".into(),
                found: Some((
                    Record {
                        typename: "t".into(),
                        schema_hash: 4,
                        rev: 5,
                        data: vec![6],
                    },
                    Value::from("schema"),
                )),
                error: None,
            }),
            Post::Stored(Stored::Channel {
                project: "p".into(),
                channel: "c".into(),
                found: Some((1, 2, vec![(2, Value::from("m"))])),
                error: None,
            }),
        ];
        for p in posts {
            assert_eq!(Post::decode(&p.encode()).unwrap(), p);
        }
    }
}
