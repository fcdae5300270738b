//! The built-in scenarios, `echo` and `login-then-echo`: strictly one request, one reply,
//! measured from just before the write to the complete reply. A bot ends when the run stops,
//! when it has done `--messages` round trips, or on its first failure (which is recorded).

use crate::bson::{self, Document, Value};
use crate::cli::{Scenario, StopRule};
use crate::conn::{self, BotCtx, Failure};
use crate::framing::{self, FrameDecoder, Framing};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What the reply to a request must look like.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Any well-formed packet (its BSON must decode).
    Packet,
    /// One line.
    Line,
    /// This many bytes (raw framing has no boundaries, so an echo is counted in bytes).
    Bytes(usize),
}

/// `payload_size` printable bytes (no `\n`, so a text line stays one line).
pub fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The `echo` packet: `{"v": {"message": "echo", "data": <payload>, "seq": n}}`.
pub fn echo_packet(payload: &[u8], seq: u64) -> Vec<u8> {
    let v = Document::new()
        .with("message", Value::str("echo"))
        .with("data", Value::String(payload.to_vec()))
        .with("seq", Value::Int64(seq as i64));
    framing::packet(
        bson::to_vec(&Document::new().with("v", Value::Document(v))).expect("static keys"),
    )
}

/// The login packet: `{"v": {"message": "login", "user": "bot-<id>"}}`.
pub fn login_packet(id: usize) -> Vec<u8> {
    let v = Document::new()
        .with("message", Value::str("login"))
        .with("user", Value::str(&format!("bot-{id}")));
    framing::packet(
        bson::to_vec(&Document::new().with("v", Value::Document(v))).expect("static keys"),
    )
}

/// Runs one bot from connect to close.
pub async fn run(mut ctx: BotCtx<'_>, mut stream: TcpStream) {
    let result = session(&mut ctx, &mut stream).await;
    if let Err(f) = result {
        f.record(&ctx.rec, ctx.id);
    }
}

async fn session(ctx: &mut BotCtx<'_>, stream: &mut TcpStream) -> Result<(), Failure> {
    let plan = ctx.plan;
    let mut decoder = FrameDecoder::new(plan.framing, plan.max_message);
    if plan.scenario == Scenario::LoginThenEcho {
        let login = login_packet(ctx.id);
        if !round_trip(ctx, stream, &mut decoder, &login, Expect::Packet).await? {
            return Ok(());
        }
    }
    let body = payload(plan.payload_size);
    let (line, expect) = match plan.framing {
        Framing::Packet => (Vec::new(), Expect::Packet),
        Framing::Text => ([&body[..], b"\n"].concat(), Expect::Line),
        Framing::Raw => (body.clone(), Expect::Bytes(body.len())),
    };
    let limit = match plan.stop {
        StopRule::Messages(n) => n,
        StopRule::Duration(_) => u64::MAX,
    };
    for seq in 0..limit {
        let packet;
        let request = if plan.framing == Framing::Packet {
            packet = echo_packet(&body, seq);
            &packet[..]
        } else {
            &line[..]
        };
        if !round_trip(ctx, stream, &mut decoder, request, expect).await? {
            return Ok(());
        }
        if !plan.think_time.is_zero() && !pause(&mut ctx.stop, plan.think_time).await {
            return Ok(());
        }
    }
    Ok(())
}

/// Sleeps, unless the run stops first. Returns false if it did.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        biased;
        _ = conn::stopped(stop) => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Sends `request` and waits for its reply. Returns false if the run stopped meanwhile (an
/// abandoned round trip is neither a message nor an error).
async fn round_trip(
    ctx: &mut BotCtx<'_>,
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    request: &[u8],
    expect: Expect,
) -> Result<bool, Failure> {
    let timeout = ctx.plan.timeout;
    let t0 = Instant::now();
    tokio::select! {
        biased;
        _ = conn::stopped(&mut ctx.stop) => return Ok(false),
        r = conn::send(stream, request, timeout) => r?,
    }
    ctx.rec.sent();
    tokio::select! {
        biased;
        _ = conn::stopped(&mut ctx.stop) => return Ok(false),
        _ = tokio::time::sleep_until((t0 + timeout).into()) => return Err(Failure::timeout(timeout)),
        r = read_reply(stream, decoder, expect) => r?,
    }
    ctx.rec.received(Some(t0.elapsed()));
    Ok(true)
}

async fn read_reply(
    stream: &mut TcpStream,
    decoder: &mut FrameDecoder,
    expect: Expect,
) -> Result<(), Failure> {
    let mut owed = match expect {
        Expect::Bytes(n) => n,
        _ => 0,
    };
    loop {
        match expect {
            Expect::Packet => {
                if let Some(frame) = decoder.next_message().map_err(Failure::protocol)? {
                    bson::decode_document(&frame)
                        .map_err(|e| Failure::protocol(format!("bad BSON reply: {e}")))?;
                    return Ok(());
                }
            }
            Expect::Line => {
                if decoder.next_message().map_err(Failure::protocol)?.is_some() {
                    return Ok(());
                }
            }
            Expect::Bytes(_) => {
                let take = decoder.pending().min(owed);
                decoder.consume(take);
                owed -= take;
                if owed == 0 {
                    return Ok(());
                }
            }
        }
        conn::fill(stream, decoder).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_shapes() {
        let p = payload(30);
        assert_eq!(p.len(), 30);
        assert!(!p.contains(&b'\n'));
        let doc = bson::decode_document(&echo_packet(&p, 7)).unwrap();
        let v = doc.get("v").unwrap().as_document().unwrap();
        assert_eq!(v.get("message"), Some(&Value::str("echo")));
        assert_eq!(v.get("data"), Some(&Value::String(p)));
        assert_eq!(v.get("seq"), Some(&Value::Int64(7)));
        let doc = bson::decode_document(&login_packet(3)).unwrap();
        let v = doc.first().unwrap().as_document().unwrap();
        assert_eq!(v.get("user"), Some(&Value::str("bot-3")));
    }
}
