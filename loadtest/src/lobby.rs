//! The built-in `lobby` scenario: players for the lobby example (engine/lua/examples/lobby/),
//! written against the Rust types packet-defs generates from the example's schema
//! (`lobby_packets.rs`, checked in; packet-defs/tests/lobby.rs fails when it is stale). It
//! plays what the example's bots.lua plays: log in, list the rooms, create or join room
//! `r<(id-1)/4+1>`, then rounds of chat, ready, wait for the start, score, leaderboard, leave.
//!
//! Every frame from the server must decode under the schema, and every reply must be the
//! one the round expects (a `protocol` error otherwise). A round trip is a request and its
//! reply; news other players cause (`said`, `member`, `start`) is checked, counted as a
//! received message and does not end the measurement.

use crate::cli::StopRule;
use crate::conn::{self, BotCtx, Failure};
use crate::framing::FrameDecoder;
use crate::lobby_packets::*;
use std::time::Instant;
use tokio::net::TcpStream;

/// Players per room (bots 1-4 share r1, ...), as in bots.lua.
pub const ROOM_SIZE: u8 = 4;

/// Runs one bot from connect to close.
pub async fn run(mut ctx: BotCtx<'_>, mut stream: TcpStream) {
    let result = Player::new(&mut ctx, &mut stream).play().await;
    if let Err(f) = result {
        f.record(&ctx.rec, ctx.id);
    }
}

/// `Ok(None)`: the run stopped (an abandoned request is neither a message nor an error).
type Step<T> = Result<Option<T>, Failure>;

struct Player<'a, 'b> {
    ctx: &'a mut BotCtx<'b>,
    stream: &'a mut TcpStream,
    decoder: FrameDecoder,
    name: String,
    room: String,
    /// A `start` naming me arrived since my last `ready`.
    started: bool,
    /// My points so far this run (the server's total also counts earlier runs).
    total: i64,
    requests: u64,
}

/// The next frame, decoded and checked by the generated code.
async fn next(stream: &mut TcpStream, decoder: &mut FrameDecoder) -> Result<Message, Failure> {
    loop {
        if let Some(frame) = decoder.next_message().map_err(Failure::protocol)? {
            return Message::decode(&frame)
                .map_err(|e| Failure::protocol(format!("reply breaks lobby.packets: {e}")));
        }
        conn::fill(stream, decoder).await?;
    }
}

fn unexpected(m: &Message, waiting_for: &str) -> Failure {
    let what = match m {
        Message::Error(e) => format!(
            "error {} for {}",
            e.code.as_str(),
            e.r#for.as_deref().unwrap_or("?")
        ),
        other => other.name().to_string(),
    };
    Failure::protocol(format!("unexpected {what} while waiting for {waiting_for}"))
}

impl<'a, 'b> Player<'a, 'b> {
    fn new(ctx: &'a mut BotCtx<'b>, stream: &'a mut TcpStream) -> Self {
        let (framing, max) = (ctx.plan.framing, ctx.plan.max_message);
        let n = ctx.id;
        Player {
            ctx,
            stream,
            decoder: FrameDecoder::new(framing, max),
            name: format!("bot-{n}"),
            room: format!("r{}", (n - 1) / usize::from(ROOM_SIZE) + 1),
            started: false,
            total: 0,
            requests: 0,
        }
    }

    /// Checks news from other players; false if `m` is not news.
    fn news(&mut self, m: &Message) -> Result<bool, Failure> {
        // Other members act on their own cores: their news may overtake my `joined` or trail
        // my `left`, but it is always about my room.
        let room = match m {
            Message::Said(s) => &s.room,
            Message::Member(s) => &s.room,
            Message::Start(s) => {
                if !s.players.contains(&self.name) {
                    return Err(Failure::protocol(format!(
                        "a start without me: {:?}",
                        s.players
                    )));
                }
                self.started = true;
                &s.room
            }
            _ => return Ok(false),
        };
        if *room != self.room {
            return Err(Failure::protocol(format!("news of room {room}")));
        }
        self.ctx.rec.received(None);
        Ok(true)
    }

    /// Sends `frame` and returns the reply, timed from just before the write.
    async fn request(&mut self, frame: Vec<u8>) -> Step<Message> {
        let plan = self.ctx.plan;
        if let StopRule::Messages(n) = plan.stop {
            if self.requests >= n {
                return Ok(None);
            }
        }
        self.requests += 1;
        let t0 = Instant::now();
        tokio::select! {
            biased;
            _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
            r = conn::send(self.stream, &frame, plan.timeout) => r?,
        }
        self.ctx.rec.sent();
        loop {
            let m = tokio::select! {
                biased;
                _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
                _ = tokio::time::sleep_until((t0 + plan.timeout).into()) => return Err(Failure::timeout(plan.timeout)),
                m = next(self.stream, &mut self.decoder) => m?,
            };
            if self.news(&m)? {
                continue;
            }
            self.ctx.rec.received(Some(t0.elapsed()));
            if !plan.think_time.is_zero() {
                tokio::select! {
                    biased;
                    _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
                    _ = tokio::time::sleep(plan.think_time) => {}
                }
            }
            return Ok(Some(m));
        }
    }

    /// Waits (as long as the run lasts) for the round to start.
    async fn wait_start(&mut self) -> Step<()> {
        while !self.started {
            let m = tokio::select! {
                biased;
                _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
                m = next(self.stream, &mut self.decoder) => m?,
            };
            if !self.news(&m)? {
                return Err(unexpected(&m, "start"));
            }
        }
        self.started = false;
        Ok(Some(()))
    }

    /// Joins my room, creating it when it does not exist yet.
    async fn seat(&mut self, exists: bool) -> Step<Joined> {
        let mut create = !exists;
        loop {
            let frame = if create {
                CreateRoom {
                    room: self.room.clone(),
                    size: ROOM_SIZE,
                }
                .encode()
            } else {
                JoinRoom {
                    room: self.room.clone(),
                }
                .encode()
            };
            let Some(m) = self.request(frame).await? else {
                return Ok(None);
            };
            match m {
                Message::Joined(j) => {
                    if j.room != self.room || j.members.last() != Some(&self.name) {
                        return Err(Failure::protocol(format!(
                            "joined {} as {:?}",
                            j.room,
                            j.members.last()
                        )));
                    }
                    return Ok(Some(j));
                }
                // Another bot of my room created it first, or nobody has yet.
                Message::Error(ref e) if e.code == ErrorCode::RoomExists => create = false,
                Message::Error(ref e) if e.code == ErrorCode::NoSuchRoom => create = true,
                other => return Err(unexpected(&other, "joined")),
            }
        }
    }

    async fn play(&mut self) -> Result<(), Failure> {
        macro_rules! ask {
            ($frame:expr, $variant:ident) => {
                match self.request($frame).await? {
                    None => return Ok(()),
                    Some(Message::$variant(m)) => m,
                    Some(other) => return Err(unexpected(&other, stringify!($variant))),
                }
            };
        }
        let welcome = ask!(
            Login {
                name: self.name.clone()
            }
            .encode(),
            Welcome
        );
        if welcome.name != self.name {
            return Err(Failure::protocol(format!("welcome for {}", welcome.name)));
        }
        let rooms = ask!(ListRooms {}.encode(), Rooms);
        let mut exists = rooms.rooms.iter().any(|r| r.name == self.room);
        loop {
            if self.seat(exists).await?.is_none() {
                return Ok(());
            }
            exists = true;
            ask!(
                Chat {
                    text: format!("hello from {}", self.name)
                }
                .encode(),
                ChatSent
            );
            let ready = ask!(Ready { ready: true }.encode(), ReadyOk);
            if !ready.ready {
                return Err(Failure::protocol("ready_ok says not ready"));
            }
            if self.wait_start().await?.is_none() {
                return Ok(());
            }
            let points = 1 + (self.requests % 100) as u32;
            let scored = ask!(Score { points }.encode(), Scored);
            self.total += i64::from(points);
            // Totals only grow (a server that ran bots before holds earlier points too).
            if scored.total < self.total || scored.rank < 1 {
                return Err(Failure::protocol(format!(
                    "scored total {} rank {}",
                    scored.total, scored.rank
                )));
            }
            let top = ask!(Leaderboard { count: 10 }.encode(), Top);
            let ordered = top
                .entries
                .windows(2)
                .all(|w| w[0].rank < w[1].rank && w[0].score >= w[1].score);
            if !ordered {
                return Err(Failure::protocol("leaderboard out of order"));
            }
            let left = ask!(LeaveRoom {}.encode(), Left);
            if left.room != self.room {
                return Err(Failure::protocol(format!("left {}", left.room)));
            }
        }
    }
}
