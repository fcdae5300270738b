//! Lua bot scenarios. A script defines `on_connect(bot)`, `on_message(bot, msg)` and
//! optionally `on_tick(bot)`; each bot gets a `bot` table with `id`, `state`, `send`, `close`
//! and `mark`. One LuaJIT state serves all the bots of a worker thread (mlua's `Lua` is not
//! `Send`, and one state per thread keeps memory flat at thousands of bots); callbacks only
//! queue output, and the bot's task writes it after the callback returns, so Lua is never
//! entered while a socket operation is pending.

use crate::bson::{self, Document, Value};
use crate::cli::StopRule;
use crate::conn::{self, BotCtx, Failure};
use crate::framing::{FrameDecoder, Framing};
use crate::lua_bson;
use crate::stats::{DisconnectReason, ErrorKind};
use anyhow::{anyhow, Context};
use bytes::Bytes;
use mlua::{Function, Lua, MultiValue, Table};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A loaded script: one per worker thread.
pub struct Script {
    lua: Lua,
    on_connect: Option<Function>,
    on_message: Function,
    on_tick: Option<Function>,
}

impl Script {
    /// Runs the script's chunk and looks up its callbacks. `name` is used in error messages.
    pub fn load(source: &[u8], name: &str) -> anyhow::Result<Script> {
        let lua = Lua::new();
        install_print(&lua).map_err(|e| anyhow!("{e}"))?;
        add_script_dir(&lua, name).map_err(|e| anyhow!("{e}"))?;
        lua.load(source)
            .set_name(format!("@{name}"))
            .exec()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("loading {name}"))?;
        let g = lua.globals();
        let callback = |key: &str| -> anyhow::Result<Option<Function>> {
            match g.get::<mlua::Value>(key).map_err(|e| anyhow!("{e}"))? {
                mlua::Value::Nil => Ok(None),
                mlua::Value::Function(f) => Ok(Some(f)),
                other => Err(anyhow!(
                    "{name}: `{key}` must be a function, not a {}",
                    other.type_name()
                )),
            }
        };
        let on_connect = callback("on_connect")?;
        let on_tick = callback("on_tick")?;
        let on_message = callback("on_message")?
            .ok_or_else(|| anyhow!("{name}: the script must define on_message(bot, msg)"))?;
        Ok(Script {
            lua,
            on_connect,
            on_message,
            on_tick,
        })
    }

    /// Builds the `bot` table for one bot, wired to its output queue.
    fn make_bot(&self, id: usize, io: &Rc<BotIo>) -> mlua::Result<Table> {
        let lua = &self.lua;
        let bot = lua.create_table()?;
        bot.set("id", id as i64)?;
        bot.set("state", lua.create_table()?)?;
        // Each function takes its argument last, so both bot.send(x) and bot:send(x) work.
        let out = io.clone();
        bot.set(
            "send",
            lua.create_function(move |_, args: MultiValue| out.queue(args.iter().last()))?,
        )?;
        let out = io.clone();
        bot.set(
            "close",
            lua.create_function(move |_, _: MultiValue| {
                out.close.set(true);
                Ok(())
            })?,
        )?;
        // `bot.unsolicited()`: the message being handled is not the reply the pending mark
        // waits for (news another player caused), so the measurement goes on.
        let out = io.clone();
        bot.set(
            "unsolicited",
            lua.create_function(move |_, _: MultiValue| {
                out.unsolicited.set(true);
                Ok(())
            })?,
        )?;
        let out = io.clone();
        bot.set(
            "mark",
            lua.create_function(move |_, _: MultiValue| {
                out.mark.set(Some(Instant::now()));
                out.fresh_mark.set(true);
                Ok(())
            })?,
        )?;
        Ok(bot)
    }

    /// The message as the script sees it: the decoded first element for packets, the bytes
    /// (a line with its `\n`, or a raw chunk) otherwise.
    fn message(&self, framing: Framing, m: &Bytes) -> Result<mlua::Value, Failure> {
        let value = match framing {
            Framing::Packet => {
                let doc = bson::decode_document(m)
                    .map_err(|e| Failure::protocol(format!("bad BSON message: {e}")))?;
                match doc.first() {
                    Some(v) => lua_bson::to_lua(&self.lua, v),
                    None => Ok(mlua::Value::Nil),
                }
            }
            Framing::Text | Framing::Raw => self.lua.create_string(m).map(mlua::Value::String),
        };
        value.map_err(script_failure)
    }
}

/// `print` goes to stderr, so `--json -` on stdout stays parseable.
fn install_print(lua: &Lua) -> mlua::Result<()> {
    let tostring: Function = lua.globals().get("tostring")?;
    let print = lua.create_function(move |_, args: MultiValue| {
        let mut parts = Vec::with_capacity(args.len());
        for a in args {
            parts.push(tostring.call::<String>(a)?);
        }
        eprintln!("{}", parts.join("\t"));
        Ok(())
    })?;
    lua.globals().set("print", print)
}

/// `require` looks next to the script first, so a scenario can ship its modules beside it
/// (the lobby's bots load their generated codecs, lobby_packets.lua, this way).
fn add_script_dir(lua: &Lua, name: &str) -> mlua::Result<()> {
    let dir = std::path::Path::new(name)
        .parent()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ".".into());
    let package: Table = lua.globals().get("package")?;
    let path: String = package.get("path")?;
    package.set("path", format!("{dir}/?.lua;{path}"))
}

/// Checks a script before the run (so a typo is a usage error, exit code 2).
pub fn check_script(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let source = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Script::load(&source, &path.display().to_string())?;
    Ok(source)
}

fn script_failure(e: mlua::Error) -> Failure {
    // The first line says where and what; the traceback would flood the summary.
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").to_string();
    Failure::new(
        ErrorKind::Script,
        DisconnectReason::ScriptError,
        format!("script error: {first}"),
    )
}

/// A bot's side of the script: what callbacks queued, and its measurement state.
struct BotIo {
    framing: Framing,
    outbox: RefCell<Vec<u8>>,
    frames: Cell<u64>,
    close: Cell<bool>,
    /// Start of the pending latency measurement.
    mark: Cell<Option<Instant>>,
    /// `mark()` was called in the current callback: restamp it when the output is written,
    /// so think time and callback time are not counted as server latency.
    fresh_mark: Cell<bool>,
    /// `unsolicited()` was called for the message being handled.
    unsolicited: Cell<bool>,
}

impl BotIo {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            outbox: RefCell::default(),
            frames: Cell::new(0),
            close: Cell::new(false),
            mark: Cell::new(None),
            fresh_mark: Cell::new(false),
            unsolicited: Cell::new(false),
        }
    }

    /// `bot.send(v)`: a string is written as it is; a table becomes the packet `{"v": tbl}`.
    fn queue(&self, v: Option<&mlua::Value>) -> mlua::Result<()> {
        let mut out = self.outbox.borrow_mut();
        match v {
            Some(mlua::Value::String(s)) => out.extend_from_slice(&s.as_bytes()),
            Some(mlua::Value::Table(t)) => {
                if self.framing != Framing::Packet {
                    return Err(mlua::Error::runtime(
                        "bot.send: a table needs --framing packet; send a string instead",
                    ));
                }
                let doc = lua_bson::table_to_document(t)?;
                let wrapped = Document::new().with("v", Value::Document(doc));
                bson::encode_document(&wrapped, &mut out).map_err(mlua::Error::runtime)?;
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "bot.send: expected a table or a string, got {}",
                    other.map_or("nothing", |v| v.type_name())
                )))
            }
        }
        self.frames.set(self.frames.get() + 1);
        Ok(())
    }
}

/// What woke the bot up.
enum Event {
    Stop,
    Timeout,
    Read(Result<usize, Failure>),
    Tick,
}

/// Runs one Lua bot from connect to close.
pub async fn run(script: Rc<Script>, mut ctx: BotCtx<'_>, mut stream: TcpStream) {
    if let Err(f) = session(&script, &mut ctx, &mut stream).await {
        f.record(&ctx.rec, ctx.id);
    }
}

async fn session(
    script: &Script,
    ctx: &mut BotCtx<'_>,
    stream: &mut TcpStream,
) -> Result<(), Failure> {
    let plan = ctx.plan;
    let io = Rc::new(BotIo::new(plan.framing));
    let bot = script.make_bot(ctx.id, &io).map_err(script_failure)?;
    let limit = match plan.stop {
        StopRule::Messages(n) => n,
        StopRule::Duration(_) => u64::MAX,
    };
    let mut decoder = FrameDecoder::new(plan.framing, plan.max_message);
    let mut received = 0u64;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);

    if let Some(f) = &script.on_connect {
        f.call::<()>(&bot).map_err(script_failure)?;
    }
    flush(ctx, stream, &io).await?;
    let mut ticker = tokio::time::interval_at((Instant::now() + plan.tick).into(), plan.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if io.close.get() || received >= limit {
            return Ok(());
        }
        let deadline = io.mark.get().map(|m| m + plan.timeout);
        let event = tokio::select! {
            biased;
            _ = conn::stopped(&mut ctx.stop) => Event::Stop,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far).into()), if deadline.is_some() => Event::Timeout,
            // Ticks before reads: a busy socket must not starve on_tick.
            _ = ticker.tick(), if script.on_tick.is_some() => Event::Tick,
            r = conn::fill(stream, &mut decoder) => Event::Read(r),
        };
        match event {
            Event::Stop => return Ok(()),
            Event::Timeout => return Err(Failure::timeout(plan.timeout)),
            Event::Read(r) => {
                r?;
                while let Some(m) = decoder.next_message().map_err(Failure::protocol)? {
                    let msg = script.message(plan.framing, &m)?;
                    let pending = io.mark.take();
                    let rtt = pending.map(|t| t.elapsed());
                    received += 1;
                    let result = script.on_message.call::<()>((&bot, msg));
                    if io.unsolicited.replace(false) {
                        // Not the awaited reply: the pending measurement (unless the callback
                        // started a new one) still waits.
                        if io.mark.get().is_none() {
                            io.mark.set(pending);
                        }
                        ctx.rec.received(None);
                    } else {
                        ctx.rec.received(rtt);
                    }
                    result.map_err(script_failure)?;
                    if io.close.get() || received >= limit {
                        break;
                    }
                }
                if received >= limit {
                    // Done: a request queued now would never be answered within the run.
                    return Ok(());
                }
                // Think time: the pause between a reply and the bot's next message.
                if !plan.think_time.is_zero() && io.frames.get() > 0 {
                    tokio::select! {
                        biased;
                        _ = conn::stopped(&mut ctx.stop) => return Ok(()),
                        _ = tokio::time::sleep(plan.think_time) => {}
                    }
                }
                flush(ctx, stream, &io).await?;
            }
            Event::Tick => {
                if let Some(f) = &script.on_tick {
                    f.call::<()>(&bot).map_err(script_failure)?;
                }
                flush(ctx, stream, &io).await?;
            }
        }
    }
}

/// Writes what the callbacks queued, in one write.
async fn flush(ctx: &BotCtx<'_>, stream: &mut TcpStream, io: &BotIo) -> Result<(), Failure> {
    let bytes = std::mem::take(&mut *io.outbox.borrow_mut());
    let frames = io.frames.replace(0);
    if io.fresh_mark.replace(false) && !bytes.is_empty() {
        io.mark.set(Some(Instant::now()));
    }
    if bytes.is_empty() {
        return Ok(());
    }
    conn::send(stream, &bytes, ctx.plan.timeout).await?;
    for _ in 0..frames {
        ctx.rec.sent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_checks_callbacks() {
        let ok = Script::load(b"function on_message(bot, msg) end", "t.lua").unwrap();
        assert!(ok.on_connect.is_none() && ok.on_tick.is_none());
        let missing = Script::load(b"function on_connect(bot) end", "t.lua")
            .err()
            .unwrap();
        assert!(missing.to_string().contains("on_message"), "{missing}");
        let wrong = Script::load(b"on_message = 3", "t.lua").err().unwrap();
        assert!(wrong.to_string().contains("must be a function"), "{wrong}");
        let syntax = Script::load(b"function (", "t.lua").err().unwrap();
        assert!(format!("{syntax:#}").contains("t.lua"), "{syntax:#}");
    }

    #[test]
    fn bot_api_queues_output() {
        let script = Script::load(
            br#"function on_message(bot, msg)
                    bot.state.n = (bot.state.n or 0) + 1
                    bot.mark()
                    bot.send({message = "ping", n = bot.state.n, who = bot.id})
                    bot:send("raw")
                    if msg == "bye" then bot.close() end
                end"#,
            "t.lua",
        )
        .unwrap();
        let io = Rc::new(BotIo::new(Framing::Packet));
        let bot = script.make_bot(9, &io).unwrap();
        let msg = script.lua.create_string("bye").unwrap();
        script.on_message.call::<()>((&bot, msg)).unwrap();
        assert_eq!(io.frames.get(), 2);
        assert!(io.close.get());
        assert!(io.mark.get().is_some() && io.fresh_mark.get());
        let out = io.outbox.borrow().clone();
        let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
        let doc = bson::decode_document(&out[..len]).unwrap();
        let v = doc.get("v").unwrap().as_document().unwrap();
        assert_eq!(v.get("n"), Some(&Value::Int64(1)));
        assert_eq!(v.get("who"), Some(&Value::Int64(9)));
        assert_eq!(&out[len..], b"raw");
    }

    #[test]
    fn require_finds_modules_next_to_the_script() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("codecs.lua"), "return { answer = 42 }").unwrap();
        let path = dir.path().join("bots.lua");
        let script = Script::load(
            b"ANSWER = require('codecs').answer function on_message() end",
            &path.display().to_string(),
        )
        .unwrap();
        assert_eq!(script.lua.globals().get::<i64>("ANSWER").unwrap(), 42);
    }

    #[test]
    fn unsolicited_marks_the_message_being_handled() {
        let script = Script::load(
            b"function on_message(bot, msg) if msg == 'news' then bot.unsolicited() end end",
            "t.lua",
        )
        .unwrap();
        let io = Rc::new(BotIo::new(Framing::Text));
        let bot = script.make_bot(1, &io).unwrap();
        let news = script.lua.create_string("news").unwrap();
        script.on_message.call::<()>((&bot, news)).unwrap();
        assert!(io.unsolicited.replace(false));
        let reply = script.lua.create_string("reply").unwrap();
        script.on_message.call::<()>((&bot, reply)).unwrap();
        assert!(!io.unsolicited.get());
    }

    #[test]
    fn tables_need_packet_framing() {
        let io = BotIo::new(Framing::Text);
        let lua = Lua::new();
        let t = mlua::Value::Table(lua.create_table().unwrap());
        assert!(io
            .queue(Some(&t))
            .unwrap_err()
            .to_string()
            .contains("--framing packet"));
        assert!(io.queue(None).is_err());
        assert!(io.queue(Some(&mlua::Value::Boolean(true))).is_err());
    }

    #[test]
    fn script_errors_become_failures() {
        let script =
            Script::load(b"function on_message(bot, msg) error('boom') end", "s.lua").unwrap();
        let io = Rc::new(BotIo::new(Framing::Packet));
        let bot = script.make_bot(1, &io).unwrap();
        let e = script
            .on_message
            .call::<()>((&bot, mlua::Value::Nil))
            .unwrap_err();
        let f = script_failure(e);
        assert_eq!(f.kind, ErrorKind::Script);
        assert!(f.message.contains("s.lua:1: boom"), "{}", f.message);
        assert!(!f.message.contains('\n'));
    }

    #[test]
    fn packet_messages_are_decoded() {
        let script = Script::load(b"function on_message() end", "t.lua").unwrap();
        let frame = bson::to_vec(&Document::new().with(
            "v",
            Value::Document(Document::new().with("result", Value::str("ok"))),
        ))
        .unwrap();
        let v = script
            .message(Framing::Packet, &Bytes::from(frame))
            .unwrap();
        let mlua::Value::Table(t) = v else { panic!() };
        assert_eq!(t.get::<String>("result").unwrap(), "ok");
        let bad = script.message(Framing::Packet, &Bytes::from_static(&[6, 0, 0, 0, 9, 0]));
        assert_eq!(bad.unwrap_err().kind, ErrorKind::Protocol);
        let line = script
            .message(Framing::Text, &Bytes::from_static(b"hi\n"))
            .unwrap();
        assert_eq!(line.as_string().unwrap().to_str().unwrap(), "hi\n");
    }
}
