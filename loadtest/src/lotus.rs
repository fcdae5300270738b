//! The built-in `lotus` scenario: each bot is a lotus-client connection to a lotus stage's
//! v1 listener (spec/lotus.md §9.6, §9.7). A bot logs in (`--lotus-account`,
//! `--lotus-password`; node `<prefix>-<id>`), the run registers the bots' schema once (the
//! first bot to get there; the others wait for it), the bot creates its own state
//! `<prefix>-bot-<id>`, subscribes to its room channel `<prefix>-room-<k>` (bots 1..R share
//! room 1, ...; `--lotus-room-size` R, 0 for no channel), then makes one `call` per message:
//! the handler counts the call in the state, publishes the count to the room and returns it.
//! The call's round trip is the latency sample; a reply that is not the bot's own count is a
//! `protocol` error. Every delivery from the room is counted, and ids must follow each other
//! from 1 (the room is new to the run and subscribed from id 1, so nothing published before
//! the subscription is missed): a skipped id is a `gap` error. With `--messages N` a bot
//! waits, after its calls, for every delivery its room owes it (R x N), so a complete run
//! reports exactly `expected_deliveries`. At the end the bot calls `leave`, whose
//! `ctx.exit()` removes its state, so repeated runs do not fill the project.
//!
//! Setup steps (login, register, init, subscribe, leave) are not round trips: `sent` and
//! `received` count calls only. Any failure ends the bot and is recorded once, as the other
//! scenarios do; a refused login is a connect failure of its own kind (`login`).

use crate::cli::{LotusPlan, StopRule};
use crate::conn::{self, BotCtx, Failure};
use crate::stats::{ConnectFailure, DisconnectReason, ErrorKind, Recorder};
use lotus_client::{ChannelEvent, Client, ClientConfig, Credentials, Schema, SubOpts, Value};
use std::time::Instant;
use tokio::sync::OnceCell;

/// The bots' state type.
pub const TYPENAME: &str = "loadtest_bot";

/// `hit(data, room)`: counts the call, publishes the count to `room` (when given) and
/// returns it; `data` is the `--payload-size` payload, carried to load the wire.
const HIT: &str = "function(ctx, s, data, room)
  s.n = (s.n or 0) + 1
  if room then ctx.publish(room, s.n) end
  return s.n
end";

/// `leave()`: the bot is done; its state goes.
const LEAVE: &str = "function(ctx, s) ctx.exit() end";

/// The bots' schema.
pub fn schema() -> Schema {
    Schema::new(TYPENAME)
        .init(Value::Map(vec![(Value::from("n"), Value::from(0))]))
        .handler("hit", HIT)
        .handler("leave", LEAVE)
}

/// What the bots of one run share: the schema registration, done once.
#[derive(Default)]
pub struct Setup {
    registered: OnceCell<Result<(), String>>,
}

/// The room (0-based) of bot `id` (1-based).
pub fn room_of(id: usize, room_size: usize) -> usize {
    (id - 1) / room_size
}

/// Bots in room `room` out of `connections` (the last room may be partial).
pub fn room_members(room: usize, connections: usize, room_size: usize) -> usize {
    connections.saturating_sub(room * room_size).min(room_size)
}

/// Deliveries a complete `--messages n` run makes: every call publishes once to its room,
/// and each of the room's members receives it.
pub fn expected_deliveries(connections: usize, room_size: usize, n: u64) -> u64 {
    if room_size == 0 {
        return 0;
    }
    let rooms = connections.div_ceil(room_size);
    (0..rooms)
        .map(|r| {
            let m = room_members(r, connections, room_size) as u64;
            m * m * n
        })
        .sum()
}

/// A client error as the report counts it.
fn failure(e: &lotus_client::Error, doing: &str) -> Failure {
    use lotus_client::Error as E;
    match e {
        E::Server { code, message, .. } => Failure::new(
            ErrorKind::Server,
            DisconnectReason::ServerError,
            format!("{doing}: server error {code}: {message}"),
        ),
        E::Timeout(d) => {
            let mut f = Failure::timeout(*d);
            f.message = format!("{doing}: {}", f.message);
            f
        }
        E::Disconnected | E::Closed => Failure::new(
            ErrorKind::Disconnect,
            DisconnectReason::Reset,
            format!("{doing}: {e}"),
        ),
        E::Io(_) => Failure::new(
            ErrorKind::Io,
            DisconnectReason::IoError,
            format!("{doing}: {e}"),
        ),
        E::Protocol(_) | E::AlreadySubscribed(_) => Failure::protocol(format!("{doing}: {e}")),
    }
}

/// Why `Client::connect` failed, as a connect failure.
fn connect_failure(e: &lotus_client::Error) -> ConnectFailure {
    use lotus_client::Error as E;
    match e {
        E::Server { .. } => ConnectFailure::Login,
        E::Timeout(_) => ConnectFailure::Timeout,
        // The client keeps the io::Error's text only.
        E::Io(m) if m.contains("refused") => ConnectFailure::Refused,
        E::Io(m) if m.contains("timed out") => ConnectFailure::Timeout,
        _ => ConnectFailure::Other,
    }
}

/// Runs one bot: connect and log in (accounted as a connect), the session, the close.
pub async fn run(mut ctx: BotCtx<'_>, setup: &Setup) {
    let plan = ctx.plan;
    let lp = plan
        .lotus
        .as_ref()
        .expect("a lotus plan for the lotus scenario");
    let creds = Credentials {
        account: lp.account.clone(),
        password: lp.password.clone(),
        node: format!("{}-{}", lp.prefix, ctx.id),
    };
    let cfg = ClientConfig {
        request_timeout: plan.timeout,
        max_frame: plan.max_message,
        ..ClientConfig::default()
    };
    let addr = plan.addr.to_string();
    let connected = tokio::select! {
        biased;
        _ = conn::stopped(&mut ctx.stop) => return,
        r = Client::connect_with(&addr, creds, cfg) => r,
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            ctx.rec.connect_failed(
                connect_failure(&e),
                format!("bot {}: connect to {addr}: {e}", ctx.id),
            );
            return;
        }
    };
    ctx.rec.connected();
    if let Err(f) = Bot::new(&mut ctx, lp, &client).session(setup).await {
        f.record(&ctx.rec, ctx.id);
    }
    // Dropping the client closes the connection.
    drop(client);
    ctx.rec.closed();
}

/// One bot's room subscription and what it has seen.
struct Room {
    sub: lotus_client::Subscription,
    ids: Ids,
}

/// The ids a room delivered to one bot: they must follow each other from 1.
#[derive(Debug)]
struct Ids {
    room: String,
    /// The id the next delivery must carry.
    next: u64,
    delivered: u64,
}

impl Ids {
    fn new(room: &str) -> Ids {
        Ids {
            room: room.to_string(),
            next: 1,
            delivered: 0,
        }
    }

    /// Checks and counts one event. A gap is recorded (and the bot goes on); what cannot
    /// happen on a healthy room ends the bot.
    fn event(
        &mut self,
        ev: Option<ChannelEvent>,
        rec: &Recorder,
        bot: usize,
    ) -> Result<(), Failure> {
        match ev {
            Some(ChannelEvent::Msg { id, .. }) => self.msg(id, rec, bot),
            Some(ChannelEvent::Truncated { first_id }) => {
                if first_id > self.next {
                    rec.gap(
                        first_id - self.next,
                        format!(
                            "bot {bot}: room {}: history truncated, ids {}..{} lost",
                            self.room,
                            self.next,
                            first_id - 1
                        ),
                    );
                    self.next = first_id;
                }
                Ok(())
            }
            Some(ChannelEvent::Deleted) => Err(Failure::protocol(format!(
                "room {} was deleted during the run",
                self.room
            ))),
            None => Err(Failure::new(
                ErrorKind::Disconnect,
                DisconnectReason::Reset,
                format!("room {}: the subscription ended", self.room),
            )),
        }
    }

    fn msg(&mut self, id: u64, rec: &Recorder, bot: usize) -> Result<(), Failure> {
        if id < self.next {
            return Err(Failure::protocol(format!(
                "room {}: delivery id {id} again (expected {})",
                self.room, self.next
            )));
        }
        if id > self.next {
            rec.gap(
                id - self.next,
                format!(
                    "bot {bot}: room {}: delivery id {id} after {} ({} missing)",
                    self.room,
                    self.next - 1,
                    id - self.next
                ),
            );
        }
        self.next = id + 1;
        self.delivered += 1;
        rec.delivered();
        Ok(())
    }
}

struct Bot<'a, 'b> {
    ctx: &'a mut BotCtx<'b>,
    lp: &'a LotusPlan,
    client: &'a Client,
    room: Option<Room>,
}

impl<'a, 'b> Bot<'a, 'b> {
    fn new(ctx: &'a mut BotCtx<'b>, lp: &'a LotusPlan, client: &'a Client) -> Self {
        Bot {
            ctx,
            lp,
            client,
            room: None,
        }
    }

    /// Register (once per run), init, subscribe, the calls, the remaining deliveries, leave.
    /// `Ok` also when the run stopped midway (an abandoned call is neither a message nor an
    /// error).
    async fn session(&mut self, setup: &Setup) -> Result<(), Failure> {
        let plan = self.ctx.plan;
        let client = self.client;
        let registered = setup
            .registered
            .get_or_init(|| async {
                client
                    .register(&schema())
                    .await
                    .map_err(|e| failure(&e, "registering the schema").message)
            })
            .await;
        if let Err(message) = registered {
            return Err(Failure::new(
                ErrorKind::Server,
                DisconnectReason::ServerError,
                message.clone(),
            ));
        }
        let name = format!("{}-bot-{}", self.lp.prefix, self.ctx.id);
        let state = client
            .init(TYPENAME, &name, Value::Nil)
            .await
            .map_err(|e| failure(&e, "init_state"))?;
        let room_name = (self.lp.room_size > 0).then(|| {
            format!(
                "{}-room-{}",
                self.lp.prefix,
                room_of(self.ctx.id, self.lp.room_size) + 1
            )
        });
        if let Some(room) = &room_name {
            // From id 1: the room is new to this run, so this replays whatever the room's
            // other bots published before this one subscribed (the stage's `history` must
            // hold a room's whole run for a `--messages` run to count every delivery).
            let sub = client
                .channel(room)
                .subscribe(SubOpts { from: Some(1) })
                .await
                .map_err(|e| failure(&e, "subscribe"))?;
            self.room = Some(Room {
                sub,
                ids: Ids::new(room),
            });
        }
        let data = Value::from(crate::builtin::payload(plan.payload_size));
        let room_arg = room_name.map_or(Value::Nil, Value::from);
        let limit = match plan.stop {
            StopRule::Messages(n) => n,
            StopRule::Duration(_) => u64::MAX,
        };
        let mut done = true;
        for seq in 1..=limit {
            let t0 = Instant::now();
            self.ctx.rec.sent();
            let call = state.call("hit", vec![data.clone(), room_arg.clone()]);
            let Some(reply) = self.drain_until(call).await? else {
                done = false;
                break;
            };
            let reply = reply.map_err(|e| failure(&e, "call hit"))?;
            if reply.first().and_then(Value::as_u64) != Some(seq) {
                return Err(Failure::protocol(format!(
                    "call {seq} of hit answered {reply:?}, expected [{seq}]"
                )));
            }
            self.ctx.rec.received(Some(t0.elapsed()));
            if !plan.think_time.is_zero() {
                let pause = tokio::time::sleep(plan.think_time);
                if self.drain_until(pause).await?.is_none() {
                    done = false;
                    break;
                }
            }
        }
        if done {
            self.await_deliveries().await?;
        }
        // Unsubscribed first: nobody drains the room any more, and a full subscription
        // buffer would stop the client reading the socket, `leave`'s reply included.
        self.room = None;
        // The state goes, even when the run stopped (bounded by --timeout like every call).
        state
            .call("leave", Vec::new())
            .await
            .map_err(|e| failure(&e, "call leave"))?;
        Ok(())
    }

    /// Runs `fut` while counting room deliveries. `None`: the run stopped first.
    async fn drain_until<F: std::future::Future>(
        &mut self,
        fut: F,
    ) -> Result<Option<F::Output>, Failure> {
        tokio::pin!(fut);
        loop {
            let ev = match &mut self.room {
                Some(room) => tokio::select! {
                    biased;
                    _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
                    out = &mut fut => return Ok(Some(out)),
                    ev = room.sub.next_event() => ev,
                },
                None => tokio::select! {
                    biased;
                    _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
                    out = &mut fut => return Ok(Some(out)),
                },
            };
            let room = self.room.as_mut().expect("an event comes from the room");
            room.ids.event(ev, &self.ctx.rec, self.ctx.id)?;
        }
    }

    /// After a `--messages` run's calls: waits until the room has delivered everything its
    /// members published (each wait bounded by --timeout), or the run stops.
    async fn await_deliveries(&mut self) -> Result<(), Failure> {
        let plan = self.ctx.plan;
        let (StopRule::Messages(n), Some(_)) = (plan.stop, self.room.as_ref()) else {
            return Ok(());
        };
        let members = room_members(
            room_of(self.ctx.id, self.lp.room_size),
            plan.connections,
            self.lp.room_size,
        ) as u64;
        let owed = members * n;
        // Ids run 1..=owed in a complete run; a gap moves `next` on as well.
        while self.room.as_ref().is_some_and(|r| r.ids.next <= owed) {
            let wait = tokio::time::sleep(plan.timeout);
            match self.drain_one(wait).await? {
                None => return Ok(()),
                Some(true) => {}
                Some(false) => {
                    let ids = &self.room.as_ref().expect("checked above").ids;
                    return Err(Failure::new(
                        ErrorKind::Timeout,
                        DisconnectReason::Timeout,
                        format!(
                            "room {}: {} of {owed} deliveries, then none within {}",
                            ids.room,
                            ids.delivered,
                            crate::units::format_duration(plan.timeout)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits for one room event (counted) or `deadline`. `None`: the run stopped first;
    /// `Some(false)`: the deadline passed.
    async fn drain_one(&mut self, deadline: tokio::time::Sleep) -> Result<Option<bool>, Failure> {
        let room = self.room.as_mut().expect("called with a room");
        let ev = tokio::select! {
            biased;
            _ = conn::stopped(&mut self.ctx.stop) => return Ok(None),
            ev = room.sub.next_event() => ev,
            _ = deadline => return Ok(Some(false)),
        };
        room.ids.event(ev, &self.ctx.rec, self.ctx.id)?;
        Ok(Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_and_expected_deliveries() {
        assert_eq!(room_of(1, 4), 0);
        assert_eq!(room_of(4, 4), 0);
        assert_eq!(room_of(5, 4), 1);
        assert_eq!(room_members(0, 10, 4), 4);
        assert_eq!(room_members(2, 10, 4), 2);
        // 10 bots in rooms of 4: 4, 4 and 2 members; each member gets every call of its room.
        assert_eq!(expected_deliveries(10, 4, 3), (16 + 16 + 4) * 3);
        assert_eq!(expected_deliveries(10, 0, 3), 0);
        assert_eq!(expected_deliveries(1, 4, 5), 5);
    }

    #[test]
    fn gaps_are_counted_and_the_bot_goes_on() {
        use std::sync::atomic::Ordering;
        let shared = crate::stats::Shared::new(1, Instant::now());
        let rec = Recorder::new(shared.clone(), 0);
        let mut ids = Ids::new("r");
        assert!(ids.msg(1, &rec, 3).is_ok());
        assert!(ids.msg(2, &rec, 3).is_ok());
        assert!(
            ids.msg(5, &rec, 3).is_ok(),
            "a gap is an error counted, not the end"
        );
        let truncated = ChannelEvent::Truncated { first_id: 9 };
        assert!(ids.event(Some(truncated), &rec, 3).is_ok());
        assert!(ids.msg(9, &rec, 3).is_ok());
        assert!(ids.msg(9, &rec, 3).is_err(), "a repeated id ends the bot");
        assert!(
            ids.event(None, &rec, 3).is_err(),
            "so does the end of the stream"
        );
        assert_eq!(ids.delivered, 4);
        assert_eq!(shared.deliveries.load(Ordering::Relaxed), 4);
        assert_eq!(shared.missed.load(Ordering::Relaxed), 2 + 3);
        let (total, samples) = shared.totals();
        assert_eq!(total.counters.errors[7], 2, "two gap errors");
        assert_eq!(
            samples,
            [
                "bot 3: room r: delivery id 5 after 2 (2 missing)",
                "bot 3: room r: history truncated, ids 6..8 lost"
            ]
        );
    }
}
