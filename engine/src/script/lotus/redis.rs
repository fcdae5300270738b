//! lotus's Redis store (docs/config.md "lotus.so persistence", spec/lotus.md §9.5): the
//! [`Backend`] the `lotus-store` thread uses for `"store": "redis://host:port/db"`. It talks
//! to Redis through redis-rs's blocking `Connection` — this thread is not a core, so blocking
//! here costs no client anything — with connect, read and write timeouts so a dead or silent
//! Redis fails a command instead of stopping the thread. Connection setup is bounded too:
//! redis-rs would send its handshake (AUTH, SELECT, CLIENT SETINFO) and wait for the replies
//! before a read timeout can be set, so the client is opened without credentials or database
//! and without CLIENT SETINFO (a crate feature), and [`Handshake`] sends AUTH and SELECT once
//! the timeouts are on.
//!
//! Keys (every name part escaped by [`part`], so no two names share a key):
//!
//! - `lotus:{stage}:schemas`: a set of `{project}:{type}`, the schemas to read at boot;
//! - `lotus:{stage}:{project}:schema:{type}`: a hash, `src` (the schema, MessagePack), `ts`;
//! - `lotus:{stage}:{project}:st:{name}`: a hash, `type`, `schema` (its hash), `rev`, `data`
//!   (the state, MessagePack). Written by [`PUT_STATE`], which refuses a `rev` not above the
//!   stored one: a late or stale write never replaces a newer state;
//! - `lotus:{stage}:{project}:ch:{channel}`: a stream, entry id `{id}-0` (the channel's
//!   message id), fields `m` (the message, MessagePack) and `e` (the channel's epoch),
//!   trimmed to `history` entries. Written by [`APPEND`], which skips an id already stored (a
//!   retry after a lost reply) and drops a stream of an older epoch (a delete that was lost).
//!
//! Redis down: a command that needs an answer (register, a first load) fails with an error
//! naming the store; a flush reports its states failed (they stay dirty on their cores and
//! are written at a later flush); channel messages are kept here, in order, up to
//! [`MAX_KEPT_BYTES`], and written when Redis answers again. Reconnects back off from
//! [`RETRY_MIN`] to [`RETRY_MAX`]; the outage is logged when it starts and when it ends, not
//! per command.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{ConnectionLike, IntoConnectionInfo, Value as Reply};
use rmpv::Value;

use super::store::{Backend, Item, Record, Tail};
use super::value;

/// How long each step of a connection attempt may take: the TCP connect, then each reply
/// of the handshake (AUTH, SELECT).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command (or pipeline) may wait for Redis.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before a reconnect, doubled per failure up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Channel messages (and deletes) waiting for Redis, in bytes of messages: past it a new
/// message is not kept (counted, logged once per outage); it was delivered live all the same.
pub const MAX_KEPT_BYTES: usize = 64 << 20;
/// Channel operations written in one pipeline.
const BATCH: usize = 512;

/// Sets a state's hash when `rev` (ARGV[1]) is above the stored one; 1 written, 0 refused.
/// Revisions are compared as decimal strings (length, then text): exact for any u64, which
/// Lua's numbers are not.
pub const PUT_STATE: &str = r#"
local function above(a, b) if #a ~= #b then return #a > #b end return a > b end
local cur = redis.call('HGET', KEYS[1], 'rev')
if cur and not above(ARGV[1], cur) then return 0 end
redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'type', ARGV[2], 'schema', ARGV[3], 'data', ARGV[4])
return 1
"#;

/// Appends message ARGV[1] (id) of epoch ARGV[2] to stream KEYS[1], trimmed to ARGV[4]; 1
/// appended, 0 skipped (already there, or of an epoch older than the stream's).
pub const APPEND: &str = r#"
local function above(a, b) if #a ~= #b then return #a > #b end return a > b end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if top then
  local e
  for i = 1, #top[2], 2 do if top[2][i] == 'e' then e = top[2][i + 1] end end
  if e == ARGV[2] then
    if not above(ARGV[1], string.match(top[1], '^(%d+)')) then return 0 end
  elseif e and above(e, ARGV[2]) then
    return 0
  else
    redis.call('DEL', KEYS[1])
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], ARGV[1] .. '-0', 'm', ARGV[3], 'e', ARGV[2])
return 1
"#;

/// One key part: `%` and `:` escaped (`%25`, `%3A`), so parts never run into each other.
pub fn part(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

fn unpart(s: &str) -> String {
    s.replace("%3A", ":").replace("%25", "%")
}

/// The key prefix of stage `entry` (`lotus.so+NAME` → `lotus:NAME`).
pub fn prefix(entry: &str) -> String {
    let name = entry.split_once('+').map_or(entry, |(_, n)| n);
    format!("lotus:{}", part(name))
}

/// `url` without its password, for logs and replies.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A channel operation waiting for Redis.
enum Op {
    Append {
        key: String,
        epoch: u64,
        id: u64,
        msg: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Append { key, .. } | Op::Delete { key } => key,
        }
    }
    fn bytes(&self) -> usize {
        match self {
            Op::Append { msg, key, .. } => msg.len() + key.len(),
            Op::Delete { key } => key.len(),
        }
    }
}

/// What a new connection must send before it is used: the URL's credentials and database.
/// Sent by [`Redis::conn`] after the connection's read and write timeouts are set (the
/// crate would send them first, unbounded).
#[derive(Debug, Default, PartialEq)]
struct Handshake {
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Handshake {
    /// Splits the handshake off `url`'s connection info, leaving info that makes redis-rs
    /// send nothing while it connects (RESP2: RESP3's HELLO would be a handshake as well).
    fn split(url: &str) -> redis::RedisResult<(redis::ConnectionInfo, Handshake)> {
        let mut info = url.into_connection_info()?;
        let hs = Handshake {
            username: info.redis.username.take(),
            password: info.redis.password.take(),
            db: std::mem::take(&mut info.redis.db),
        };
        info.redis.protocol = redis::ProtocolVersion::RESP2;
        Ok((info, hs))
    }

    /// AUTH and SELECT on `c`, whose timeouts are already set.
    fn run(&self, c: &mut redis::Connection) -> redis::RedisResult<()> {
        if let Some(password) = &self.password {
            let auth = |user: Option<&String>| {
                let mut cmd = redis::cmd("AUTH");
                if let Some(u) = user {
                    cmd.arg(u);
                }
                cmd.arg(password);
                cmd
            };
            match auth(self.username.as_ref()).query::<()>(c) {
                // A Redis before 6 knows AUTH with a password only (redis-rs retries so too).
                Err(e)
                    if self.username.is_some()
                        && e.to_string().contains("wrong number of arguments") =>
                {
                    auth(None).query::<()>(c)?
                }
                r => r?,
            }
        }
        if self.db != 0 {
            redis::cmd("SELECT").arg(self.db).query::<()>(c)?;
        }
        Ok(())
    }
}

pub struct Redis {
    client: Result<redis::Client, String>,
    handshake: Handshake,
    prefix: String,
    history: usize,
    conn: Option<redis::Connection>,
    /// No connection attempt before this (the backoff).
    retry_at: Instant,
    retry: Duration,
    /// Since when and why Redis is unreachable (the outage was logged once).
    down: Option<(Instant, String)>,
    kept: VecDeque<Op>,
    kept_bytes: usize,
    /// Messages not kept because [`MAX_KEPT_BYTES`] was reached, since start.
    pub dropped: u64,
    dropped_logged: bool,
    /// Writes refused by the revision fence, since start.
    pub fenced: u64,
    what: String,
}

/// A Redis error: transport (the connection is gone) or the server's answer to one command.
enum Fail {
    Down(String),
    Server(String),
}

impl Redis {
    pub fn new(url: &str, entry: &str, history: usize) -> Redis {
        let (client, handshake) = match Handshake::split(url)
            .and_then(|(info, hs)| redis::Client::open(info).map(|client| (client, hs)))
        {
            Ok((client, hs)) => (Ok(client), hs),
            Err(e) => (
                Err(format!("cannot use the URL: {e}")),
                Handshake::default(),
            ),
        };
        Redis {
            client,
            handshake,
            prefix: prefix(entry),
            history: history.max(1),
            conn: None,
            retry_at: Instant::now(),
            retry: RETRY_MIN,
            down: None,
            kept: VecDeque::new(),
            kept_bytes: 0,
            dropped: 0,
            dropped_logged: false,
            fenced: 0,
            what: format!("lotus store `{}`", redacted(url)),
        }
    }

    fn key(&self, project: &str, kind: &str, name: &str) -> String {
        format!("{}:{}:{kind}:{}", self.prefix, part(project), part(name))
    }

    fn index_key(&self) -> String {
        format!("{}:schemas", self.prefix)
    }

    fn unreachable(&self) -> String {
        match &self.down {
            Some((_, why)) => format!("Redis is unreachable ({why}); retrying"),
            None => "Redis is unreachable; retrying".into(),
        }
    }

    /// The connection, made now unless a recent attempt failed (then the backoff's error).
    fn conn(&mut self) -> Result<&mut redis::Connection, String> {
        if self.conn.is_none() {
            if Instant::now() < self.retry_at {
                return Err(self.unreachable());
            }
            let client = self.client.as_ref().map_err(Clone::clone)?;
            // Nothing is read before the timeouts are set (see `Handshake`), so every step
            // of the setup is bounded by CONNECT_TIMEOUT: a Redis that accepts and never
            // answers costs the store thread that long per attempt, then the backoff.
            let made = client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                    c.set_write_timeout(Some(CONNECT_TIMEOUT))?;
                    self.handshake.run(&mut c)?;
                    c.set_read_timeout(Some(IO_TIMEOUT))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    Ok(c)
                });
            match made {
                Ok(c) => {
                    self.conn = Some(c);
                    self.retry = RETRY_MIN;
                    if let Some((since, _)) = self.down.take() {
                        tracing::info!(
                            "{}: Redis answers again after {:.1} s; {} kept channel operation(s) to write",
                            self.what,
                            since.elapsed().as_secs_f64(),
                            self.kept.len()
                        );
                        self.dropped_logged = false;
                    }
                }
                Err(e) => {
                    self.gone(e.to_string());
                    return Err(self.unreachable());
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The connection failed (`why`): drop it, back off, log the outage once.
    fn gone(&mut self, why: String) {
        self.conn = None;
        self.retry_at = Instant::now() + self.retry;
        self.retry = (self.retry * 2).min(RETRY_MAX);
        if self.down.is_none() {
            tracing::warn!(
                "{}: Redis is unreachable: {why}; retrying (backoff up to {} s): states stay dirty on their cores, channel messages are kept (up to {} MiB), registers and first loads fail",
                self.what,
                RETRY_MAX.as_secs(),
                MAX_KEPT_BYTES >> 20
            );
            self.down = Some((Instant::now(), why));
        }
    }

    /// Sends `pipe` and returns one reply per command (a command's server error is its
    /// reply); a transport failure drops the connection.
    fn query(&mut self, pipe: &redis::Pipeline, count: usize) -> Result<Vec<Reply>, String> {
        let packed = pipe.get_packed_pipeline();
        // A connection left idle across a Redis restart fails at its first use: that is no
        // outage, so one more try on a fresh connection (every command here may run twice:
        // the writes are fenced or skip what is there, the rest are reads, HSET, SADD, DEL).
        let reused = self.conn.is_some();
        for attempt in 0..2 {
            let conn = self.conn()?;
            match conn.req_packed_commands(&packed, 0, count) {
                Ok(replies) if replies.len() == count => return Ok(replies),
                Ok(replies) => {
                    let why = format!("{} replies to {count} commands", replies.len());
                    self.gone(why.clone());
                    return Err(why);
                }
                Err(e)
                    if attempt == 0
                        && reused
                        && !e.is_timeout()
                        && (e.is_io_error() || e.is_connection_dropped()) =>
                {
                    self.conn = None;
                }
                Err(e) => {
                    self.gone(e.to_string());
                    return Err(self.unreachable());
                }
            }
        }
        Err(self.unreachable())
    }

    /// One command's reply, a server error as `Fail::Server`.
    fn one(&mut self, cmd: redis::Cmd) -> Result<Reply, Fail> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let mut replies = self.query(&pipe, 1).map_err(Fail::Down)?;
        match replies.pop() {
            Some(Reply::ServerError(e)) => {
                Err(Fail::Server(redis::RedisError::from(e).to_string()))
            }
            Some(r) => Ok(r),
            None => Err(Fail::Down("no reply".into())),
        }
    }

    fn keep(&mut self, op: Op) {
        if let Op::Delete { key } = &op {
            // What the delete removes need not be written first.
            let before = self.kept.len();
            self.kept.retain(|o| o.key() != key);
            if self.kept.len() != before {
                self.kept_bytes = self.kept.iter().map(Op::bytes).sum();
            }
        } else if self.kept_bytes + op.bytes() > MAX_KEPT_BYTES {
            self.dropped += 1;
            if !self.dropped_logged {
                self.dropped_logged = true;
                tracing::error!(
                    "{}: {} MiB of channel messages wait for Redis (MAX_KEPT_BYTES): new messages are delivered live but not stored until Redis answers ({} so far)",
                    self.what,
                    MAX_KEPT_BYTES >> 20,
                    self.dropped
                );
            }
            return;
        }
        self.kept_bytes += op.bytes();
        self.kept.push_back(op);
    }

    /// Writes the kept channel operations, oldest first, a pipeline at a time; stops at the
    /// first transport failure (what is left stays kept).
    fn drain(&mut self) {
        while !self.kept.is_empty() {
            let n = self.kept.len().min(BATCH);
            let mut pipe = redis::pipe();
            for op in self.kept.iter().take(n) {
                match op {
                    Op::Append {
                        key,
                        epoch,
                        id,
                        msg,
                    } => {
                        pipe.cmd("EVAL")
                            .arg(APPEND)
                            .arg(1)
                            .arg(key)
                            .arg(id)
                            .arg(epoch)
                            .arg(msg.as_slice())
                            .arg(self.history);
                    }
                    Op::Delete { key } => {
                        pipe.cmd("DEL").arg(key);
                    }
                }
            }
            let Ok(replies) = self.query(&pipe, n) else {
                return;
            };
            for reply in replies {
                let op = self.kept.pop_front().expect("one reply per kept op");
                self.kept_bytes -= op.bytes();
                if let Reply::ServerError(e) = reply {
                    // Not the connection: retrying would fail the same way.
                    tracing::warn!(
                        "{}: `{}`: {} (not written)",
                        self.what,
                        op.key(),
                        redis::RedisError::from(e)
                    );
                }
            }
        }
    }

    fn text(r: &Reply) -> Option<String> {
        match r {
            Reply::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Reply::SimpleString(s) => Some(s.clone()),
            Reply::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    fn bytes(r: &Reply) -> Option<Vec<u8>> {
        match r {
            Reply::BulkString(b) => Some(b.clone()),
            Reply::SimpleString(s) => Some(s.clone().into_bytes()),
            _ => None,
        }
    }

    fn schema_of(&mut self, project: &str, typename: &str) -> Result<Option<Value>, Fail> {
        let mut c = redis::cmd("HGET");
        c.arg(self.key(project, "schema", typename)).arg("src");
        match self.one(c)? {
            Reply::Nil => Ok(None),
            r => {
                let b = Self::bytes(&r).ok_or_else(|| Fail::Server("not a schema".into()))?;
                value::decode(&b).map(Some).map_err(Fail::Server)
            }
        }
    }
}

fn fail_text(f: Fail) -> String {
    match f {
        Fail::Down(e) | Fail::Server(e) => e,
    }
}

impl Backend for Redis {
    fn put_schema(&mut self, project: &str, typename: &str, schema: &Value) -> Result<(), String> {
        self.drain();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.key(project, "schema", typename))
            .arg("src")
            .arg(value::encode(schema))
            .arg("ts")
            .arg(ts)
            .cmd("SADD")
            .arg(self.index_key())
            .arg(format!("{}:{}", part(project), part(typename)));
        for r in self.query(&pipe, 2)? {
            if let Reply::ServerError(e) = r {
                return Err(redis::RedisError::from(e).to_string());
            }
        }
        Ok(())
    }

    fn schemas(&mut self) -> Result<Vec<(String, String, Value)>, String> {
        let mut c = redis::cmd("SMEMBERS");
        c.arg(self.index_key());
        let members = match self.one(c).map_err(fail_text)? {
            Reply::Array(a) | Reply::Set(a) => a,
            _ => return Err("the schema index is not a set".into()),
        };
        let mut out = Vec::new();
        for m in members.iter().filter_map(Self::text) {
            let Some((p, t)) = m.split_once(':') else {
                continue;
            };
            let (project, typename) = (unpart(p), unpart(t));
            if let Some(schema) = self.schema_of(&project, &typename).map_err(fail_text)? {
                out.push((project, typename, schema));
            }
        }
        Ok(out)
    }

    fn flush(&mut self, items: &[Item]) -> Vec<(String, String, String)> {
        self.drain();
        let failed_all = |why: &str| {
            items
                .iter()
                .map(|i| (i.project.clone(), i.name.clone(), why.to_string()))
                .collect()
        };
        let mut pipe = redis::pipe();
        for item in items {
            let key = self.key(&item.project, "st", &item.name);
            match &item.write {
                Some(r) => {
                    pipe.cmd("EVAL")
                        .arg(PUT_STATE)
                        .arg(1)
                        .arg(key)
                        .arg(r.rev)
                        .arg(r.typename.as_str())
                        .arg(r.schema_hash)
                        .arg(r.data.as_slice());
                }
                None => {
                    pipe.cmd("DEL").arg(key);
                }
            }
        }
        let replies = match self.query(&pipe, items.len()) {
            Ok(r) => r,
            Err(e) => return failed_all(&e),
        };
        let mut failed = Vec::new();
        for (item, reply) in items.iter().zip(replies) {
            match reply {
                Reply::ServerError(e) => failed.push((
                    item.project.clone(),
                    item.name.clone(),
                    redis::RedisError::from(e).to_string(),
                )),
                Reply::Int(0) if item.write.is_some() => {
                    self.fenced += 1;
                    if self.fenced == 1 {
                        tracing::warn!(
                            "{}: state {}/{}: a newer revision is stored (is another node writing it?): this older write was refused (counted; logged once)",
                            self.what,
                            item.project,
                            item.name
                        );
                    }
                }
                _ => {}
            }
        }
        failed
    }

    fn load_state(&mut self, project: &str, name: &str) -> Result<Option<(Record, Value)>, String> {
        self.drain();
        let mut c = redis::cmd("HMGET");
        c.arg(self.key(project, "st", name))
            .arg("type")
            .arg("schema")
            .arg("rev")
            .arg("data");
        let fields = match self.one(c).map_err(fail_text)? {
            Reply::Array(a) => a,
            _ => return Err("not a stored state".into()),
        };
        if fields.iter().all(|f| matches!(f, Reply::Nil)) {
            return Ok(None);
        }
        let bad = || format!("state {project}/{name}: not a stored state");
        let get = |i: usize| fields.get(i).and_then(Self::text).ok_or_else(bad);
        let record = Record {
            typename: get(0)?,
            schema_hash: get(1)?.parse().map_err(|_| bad())?,
            rev: get(2)?.parse().map_err(|_| bad())?,
            data: fields.get(3).and_then(Self::bytes).ok_or_else(bad)?,
        };
        let schema = self
            .schema_of(project, &record.typename)
            .map_err(fail_text)?
            .ok_or_else(|| format!("the schema of type `{}` is not stored", record.typename))?;
        Ok(Some((record, schema)))
    }

    fn load_channel(&mut self, project: &str, channel: &str) -> Result<Option<Tail>, String> {
        self.drain();
        let mut c = redis::cmd("XREVRANGE");
        c.arg(self.key(project, "ch", channel))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.history);
        let entries = match self.one(c).map_err(fail_text)? {
            Reply::Array(a) => a,
            _ => return Err(format!("channel {project}/{channel}: not a stream")),
        };
        // Newest first: `[id, [field, value, ...]]`.
        let mut items = Vec::new();
        let mut newest: Option<(u64, u64)> = None;
        for entry in entries {
            let Reply::Array(pair) = entry else { continue };
            let (Some(id), Some(Reply::Array(fields))) =
                (pair.first().and_then(Self::text), pair.get(1))
            else {
                continue;
            };
            let Some(id) = id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let (mut msg, mut epoch) = (None, None);
            for kv in fields.chunks(2) {
                match (kv.first().and_then(Self::text).as_deref(), kv.get(1)) {
                    (Some("m"), Some(v)) => msg = Self::bytes(v),
                    (Some("e"), Some(v)) => epoch = Self::text(v).and_then(|e| e.parse().ok()),
                    _ => {}
                }
            }
            let (Some(msg), Some(epoch)) = (msg, epoch) else {
                continue;
            };
            let (e, _) = *newest.get_or_insert((epoch, id));
            if epoch != e {
                break;
            }
            items.push((id, value::decode(&msg)?));
        }
        let Some((epoch, last_id)) = newest else {
            return Ok(None);
        };
        items.reverse();
        Ok(Some((epoch, last_id, items)))
    }

    fn append(
        &mut self,
        project: &str,
        channel: &str,
        epoch: u64,
        id: u64,
        msg: &[u8],
    ) -> Result<(), String> {
        let key = self.key(project, "ch", channel);
        self.keep(Op::Append {
            key,
            epoch,
            id,
            msg: msg.to_vec(),
        });
        Ok(())
    }

    fn delete_channel(&mut self, project: &str, channel: &str) -> Result<(), String> {
        let key = self.key(project, "ch", channel);
        self.keep(Op::Delete { key });
        Ok(())
    }

    fn idle(&mut self) {
        self.drain();
    }

    fn stop(&mut self) -> usize {
        // One last try, whatever the backoff says.
        self.retry_at = Instant::now();
        self.drain();
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_are_escaped_so_names_never_collide() {
        let r = Redis::new("redis://127.0.0.1:1/0", "lotus.so+game", 4);
        assert_eq!(r.key("demo", "st", "c1"), "lotus:game:demo:st:c1");
        // Project `a:st:x` + state `y` and project `a` + state `x:st:y` would be one key
        // without escaping.
        assert_ne!(r.key("a:st:x", "st", "y"), r.key("a", "st", "x:st:y"));
        assert_eq!(r.key("a:st:x", "st", "y"), "lotus:game:a%3Ast%3Ax:st:y");
        assert_eq!(unpart(&part("50%:3A")), "50%:3A");
        assert_eq!(prefix("lotus.so"), "lotus:lotus.so");
    }

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redacted("redis://:secret@127.0.0.1:6379/2"),
            "redis://:***@127.0.0.1:6379/2"
        );
        assert_eq!(redacted("redis://127.0.0.1/0"), "redis://127.0.0.1/0");
    }

    #[test]
    fn the_handshake_is_split_off_so_the_crate_sends_nothing_while_connecting() {
        let (info, hs) = Handshake::split("redis://ops:secret@127.0.0.1:6379/3").unwrap();
        assert_eq!(
            hs,
            Handshake {
                username: Some("ops".into()),
                password: Some("secret".into()),
                db: 3
            }
        );
        assert_eq!(info.redis.db, 0);
        assert!(info.redis.username.is_none() && info.redis.password.is_none());
        assert_eq!(info.redis.protocol, redis::ProtocolVersion::RESP2);
        let (_, hs) = Handshake::split("redis://127.0.0.1/0").unwrap();
        assert_eq!(hs, Handshake::default());
        assert!(Redis::new("http://x", "lotus.so", 4).client.is_err());
    }

    #[test]
    fn an_unreachable_redis_fails_commands_fast_and_keeps_channel_messages() {
        // Port 1 on loopback: refused at once.
        let mut r = Redis::new("redis://127.0.0.1:1/0", "lotus.so+t", 4);
        let e = r.put_schema("p", "t", &Value::from(1)).unwrap_err();
        assert!(e.contains("Redis is unreachable"), "{e}");
        // Inside the backoff no new attempt is made: the same error at once.
        assert!(r.load_state("p", "s").unwrap_err().contains("unreachable"));
        r.append("p", "c", 1, 1, &value::encode(&Value::from("m")))
            .unwrap();
        r.append("p", "c", 1, 2, &value::encode(&Value::from("n")))
            .unwrap();
        assert_eq!(r.kept.len(), 2);
        // A delete makes the channel's kept messages moot.
        r.delete_channel("p", "c").unwrap();
        assert_eq!(r.kept.len(), 1);
        let item = Item {
            project: "p".into(),
            name: "s".into(),
            write: None,
        };
        assert_eq!(r.flush(&[item]).len(), 1);
        assert_eq!(r.stop(), 1);
    }

    /// A redis-server of this test's own on a free loopback port (nothing on disk), or `None`
    /// (skip) when none is installed — a failure under `STAGE_REQUIRE_SERVICES=1`.
    struct Killed(std::process::Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn redis_server(test: &str) -> Option<(Killed, u16)> {
        if !std::path::Path::new("/usr/bin/redis-server").exists() {
            if std::env::var("STAGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{test}: redis-server is not installed (STAGE_REQUIRE_SERVICES=1)");
            }
            println!("skipped {test}: redis-server is not installed");
            return None;
        }
        // Redis starts binding at once: a port the kernel just gave us is free.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Some((redis_on(port), port))
    }

    fn redis_on(port: u16) -> Killed {
        redis_on_with(port, &[])
    }

    fn redis_on_with(port: u16, extra: &[&str]) -> Killed {
        let child = std::process::Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = Killed(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(port: u16) -> String {
        format!("redis://127.0.0.1:{port}/0")
    }

    #[test]
    fn a_connection_idle_across_a_redis_restart_is_replaced_without_an_error() {
        let test = "a_connection_idle_across_a_redis_restart_is_replaced_without_an_error";
        let Some((server, port)) = redis_server(test) else {
            return;
        };
        let mut r = Redis::new(&url(port), "lotus.so+t", 3);
        r.put_schema("p", "a", &Value::from(1)).unwrap();
        drop(server);
        let _server = redis_on(port);
        r.put_schema("p", "b", &Value::from(2)).unwrap();
        assert!(r.down.is_none());
    }

    #[test]
    fn the_urls_password_and_database_are_used_by_our_own_handshake() {
        let test = "the_urls_password_and_database_are_used_by_our_own_handshake";
        let Some((server, port)) = redis_server(test) else {
            return;
        };
        drop(server);
        let _server = redis_on_with(port, &["--requirepass", "pw"]);
        let mut r = Redis::new(&format!("redis://:pw@127.0.0.1:{port}/2"), "lotus.so+t", 3);
        r.put_schema("p", "ty", &Value::from("schema")).unwrap();
        // The schema is in database 2, not 0 (read with redis-rs's own handshake).
        let exists = |db: u8| -> bool {
            let client = redis::Client::open(format!("redis://:pw@127.0.0.1:{port}/{db}")).unwrap();
            let mut c = client.get_connection().unwrap();
            redis::cmd("EXISTS")
                .arg("lotus:t:schemas")
                .query::<bool>(&mut c)
                .unwrap()
        };
        assert!(exists(2));
        assert!(!exists(0));
        // A wrong password is an outage like any other, with Redis's reason.
        let mut wrong = Redis::new(
            &format!("redis://:nope@127.0.0.1:{port}/2"),
            "lotus.so+t",
            3,
        );
        let e = wrong.put_schema("p", "ty", &Value::from(1)).unwrap_err();
        assert!(e.contains("Redis is unreachable"), "{e}");
        assert!(!e.contains("nope"), "{e}");
    }

    #[test]
    fn the_rev_fence_and_idempotent_appends_hold_in_redis() {
        let Some((_server, port)) =
            redis_server("the_rev_fence_and_idempotent_appends_hold_in_redis")
        else {
            return;
        };
        let mut r = Redis::new(&url(port), "lotus.so+t", 3);
        r.put_schema("p", "ty", &Value::from("schema")).unwrap();
        assert_eq!(
            r.schemas().unwrap(),
            [("p".into(), "ty".into(), Value::from("schema"))]
        );
        let rec = |rev: u64, n: i64| Record {
            typename: "ty".into(),
            schema_hash: u64::MAX,
            rev,
            data: value::encode(&Value::from(n)),
        };
        let item = |write| Item {
            project: "p".into(),
            name: "s".into(),
            write,
        };
        assert!(r
            .flush(&[item(Some(rec(1_000_000_000_000_005, 5)))])
            .is_empty());
        // A late write with a lower revision (and one equal) is refused, not failed.
        assert!(r
            .flush(&[item(Some(rec(999_999_999_999_999, 3)))])
            .is_empty());
        assert!(r
            .flush(&[item(Some(rec(1_000_000_000_000_005, 4)))])
            .is_empty());
        assert_eq!(r.fenced, 2);
        assert_eq!(
            r.load_state("p", "s").unwrap(),
            Some((rec(1_000_000_000_000_005, 5), Value::from("schema")))
        );
        assert!(r
            .flush(&[item(Some(rec(1_000_000_000_000_006, 6)))])
            .is_empty());
        assert_eq!(
            r.load_state("p", "s").unwrap().unwrap().0.rev,
            1_000_000_000_000_006
        );
        assert!(r.flush(&[item(None)]).is_empty());
        assert_eq!(r.load_state("p", "s").unwrap(), None);

        let msg = |s: &str| value::encode(&Value::from(s));
        for id in 1..=4 {
            r.append("p", "c", 7, id, &msg(&format!("m{id}"))).unwrap();
        }
        // A retried append (its reply was lost) is not stored twice.
        r.append("p", "c", 7, 4, &msg("again")).unwrap();
        r.idle();
        let tail = |r: &mut Redis| r.load_channel("p", "c").unwrap().unwrap();
        assert_eq!(
            tail(&mut r),
            (
                7,
                4,
                vec![
                    (2, Value::from("m2")),
                    (3, Value::from("m3")),
                    (4, Value::from("m4"))
                ]
            )
        );
        // An older epoch is skipped; a newer one replaces the stream (a lost delete).
        r.append("p", "c", 6, 9, &msg("old")).unwrap();
        r.append("p", "c", 8, 1, &msg("new")).unwrap();
        r.idle();
        assert_eq!(tail(&mut r), (8, 1, vec![(1, Value::from("new"))]));
        r.delete_channel("p", "c").unwrap();
        r.idle();
        assert_eq!(r.load_channel("p", "c").unwrap(), None);
    }
}
