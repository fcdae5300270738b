//! The net layer below the binary: the connection task (framing on a live socket, batching
//! and flushing replies, the `OUT` limits, closing from a callback, idle expiry), the accept
//! loop, `join` and a UDP endpoint, each on a real glommio executor and loopback sockets,
//! owned by a [`Recorder`] instead of a core. Each test checks both sides: the bytes (and
//! the end) a client sees, and the events the owner was told about.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::admission::{Gate, Limits};
use super::conn::{Conn, OutputError};
use super::id::listener_id;
use super::listener::{self, Destination, Endpoint};
use super::testing::*;
use super::url::BrokerUrl;
use super::{udp, ConnEvents};
use crate::codec::framing::{FrameSpec, Framing};
use crate::notify::Notify;

fn text_spec(input: usize, output: usize) -> FrameSpec {
    FrameSpec {
        framing: Framing::Text,
        input,
        output,
    }
}

// ---- framing on a live connection ----

#[test]
fn several_frames_in_one_write_are_reported_and_echoed_in_order() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen(&events, packet_spec(64, 256));
        let mut client = connect(server.addr).await;
        let frames = vec![packet(5, 1), packet(20, 2), packet(64, 3)];
        send(&mut client, &frames.concat()).await;
        assert_eq!(receive(&mut client, 89).await, frames.concat());

        let conn = events.first_conn().await;
        assert_eq!(
            events.seen()[0],
            Seen::Accepted {
                listener: listener_id(1),
                conn: conn.id
            }
        );
        assert_eq!(events.frames_of(conn.id), frames);
        assert_eq!(conn.peer.get(), Some(client.local_addr().unwrap()));
        assert_eq!(conn.local.get(), Some(server.addr));

        // The client hangs up: an orderly close, reported once, and the server closes too.
        client.shutdown(std::net::Shutdown::Write).await.unwrap();
        assert_eq!(read_to_end(&mut client).await, (vec![], End::Eof));
        assert_eq!(events.closed_with(conn.id).await, 0);
        assert_eq!(events.closes_of(conn.id), [0]);
        server.stop.fire();
    });
}

#[test]
fn a_frame_split_over_many_writes_is_reported_once_whole() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen(&events, packet_spec(64, 256));
        let mut client = connect(server.addr).await;

        // Byte by byte, pausing so the server sees (most of) them in separate reads.
        let first = packet(40, 1);
        for byte in &first {
            send(&mut client, std::slice::from_ref(byte)).await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(receive(&mut client, 40).await, first);

        // Then chunks of 7 that straddle frame boundaries.
        let rest = vec![packet(9, 2), packet(5, 3), packet(30, 4)];
        for chunk in rest.concat().chunks(7) {
            send(&mut client, chunk).await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(receive(&mut client, 44).await, rest.concat());

        let conn = events.first_conn().await;
        let mut all = vec![first];
        all.extend(rest);
        assert_eq!(events.frames_of(conn.id), all);
        assert!(events.closes_of(conn.id).is_empty());
        server.stop.fire();
    });
}

/// IN both below and above the first read window, so the reader's growth path is covered.
#[test]
fn a_frame_of_exactly_in_bytes_is_reported_and_one_more_byte_closes_with_emsgsize() {
    for input in [64, 2000] {
        run_local(move || async move {
            let events = Rc::new(Recorder::echo());
            let server = listen(&events, packet_spec(input, 4096));

            let mut client = connect(server.addr).await;
            let fits = packet(input, 1);
            send(&mut client, &fits).await;
            assert_eq!(receive(&mut client, input).await, fits);
            let conn = events.first_conn().await;
            assert_eq!(events.frames_of(conn.id), [fits]);

            let mut client = connect(server.addr).await;
            send(&mut client, &packet(input + 1, 2)).await;
            // The server stops reading at the header; closing with the body unread may
            // make TCP answer with a reset instead of a FIN. Either way: no reply bytes.
            let (bytes, _) = read_to_end(&mut client).await;
            assert!(bytes.is_empty(), "IN={input}: got {bytes:?}");
            let second = events.conns()[1].clone();
            assert_eq!(events.closed_with(second.id).await, libc::EMSGSIZE);
            assert_eq!(events.closes_of(second.id), [libc::EMSGSIZE]);
            assert!(events.frames_of(second.id).is_empty());
            // The first connection is untouched.
            assert!(events.closes_of(conn.id).is_empty());
            server.stop.fire();
        });
    }
}

#[test]
fn bad_packet_headers_close_the_connection() {
    // The last: a whole encrypted frame on a socket without `crypto` (see codec::crypto).
    let cases: [(u32, i32); 4] = [
        (4, libc::EBADMSG),
        (0, libc::EBADMSG),
        (0x7FFF_FFFF, libc::EMSGSIZE),
        (0x8000_0000 | 12, libc::EBADMSG),
    ];
    run_local(move || async move {
        let events = Rc::new(Recorder::echo());
        let server = listen(&events, packet_spec(64, 64));
        for (n, (header, errno)) in cases.into_iter().enumerate() {
            let mut client = connect(server.addr).await;
            let mut bytes = header.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            send(&mut client, &bytes).await;
            let (got, _) = read_to_end(&mut client).await;
            assert!(got.is_empty(), "header {header:#x}: got {got:?}");
            events
                .until("the next connection", |_| events.conns().len() > n)
                .await;
            let conn = events.conns()[n].clone();
            assert_eq!(
                events.closed_with(conn.id).await,
                errno,
                "header {header:#x}"
            );
            assert_eq!(events.closes_of(conn.id).len(), 1);
            assert!(events.frames_of(conn.id).is_empty());
        }
        server.stop.fire();
    });
}

#[test]
fn text_framing_cuts_lines_and_a_line_longer_than_in_closes() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen(&events, text_spec(16, 256));
        let mut client = connect(server.addr).await;
        send(&mut client, b"hello\nwor").await;
        assert_eq!(receive(&mut client, 6).await, b"hello\n");
        // A line of exactly IN bytes, newline included, still fits.
        send(&mut client, b"ld\n0123456789abcde\n").await;
        assert_eq!(receive(&mut client, 22).await, b"world\n0123456789abcde\n");
        let conn = events.first_conn().await;
        assert_eq!(
            events.frames_of(conn.id),
            [&b"hello\n"[..], b"world\n", b"0123456789abcde\n"]
        );

        send(&mut client, b"0123456789abcdef-and-more").await;
        let (got, _) = read_to_end(&mut client).await;
        assert!(got.is_empty(), "got {got:?}");
        assert_eq!(events.closed_with(conn.id).await, libc::EMSGSIZE);
        assert_eq!(events.closes_of(conn.id), [libc::EMSGSIZE]);
        server.stop.fire();
    });
}

#[test]
fn raw_framing_hands_over_whatever_arrives_at_most_in_bytes_at_a_time() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen(
            &events,
            FrameSpec {
                framing: Framing::Raw,
                input: 4,
                output: 64,
            },
        );
        let mut client = connect(server.addr).await;
        send(&mut client, b"no framing at all").await;
        assert_eq!(receive(&mut client, 17).await, b"no framing at all");
        send(&mut client, &[0, 0, 0, 0, 0xFF]).await;
        assert_eq!(receive(&mut client, 5).await, [0, 0, 0, 0, 0xFF]);
        let conn = events.first_conn().await;
        // Reads may be cut anywhere (never longer than IN); together they are the stream.
        let frames = events.frames_of(conn.id);
        assert!(
            frames.iter().all(|f| (1..=4).contains(&f.len())),
            "{frames:?}"
        );
        assert_eq!(frames.concat(), b"no framing at all\0\0\0\0\xFF");
        server.stop.fire();
    });
}

// ---- output: batching, limits, slow consumers ----

#[test]
fn replies_to_one_read_are_batched_and_flushed_in_order() {
    run_local(|| async {
        let unsent = Rc::new(RefCell::new(Vec::new()));
        let log = unsent.clone();
        let events = Rc::new(Recorder::new().on_frame(move |conn, frame| {
            log.borrow_mut().push(conn.unsent());
            conn.append(frame).map_err(|e| e.to_string())?;
            Ok(())
        }));
        let server = listen(&events, packet_spec(64, 1024));
        let mut client = connect(server.addr).await;
        // One small write arrives in one read: its three replies go out together, after
        // the last frame, in the order they were committed.
        let frames = [packet(5, 1), packet(6, 2), packet(7, 3)];
        send(&mut client, &frames.concat()).await;
        assert_eq!(receive(&mut client, 18).await, frames.concat());
        assert_eq!(*unsent.borrow(), [0, 5, 11]);
        server.stop.fire();
    });
}

#[test]
fn a_burst_of_replies_is_flushed_early_at_half_out() {
    run_local(|| async {
        let unsent = Rc::new(RefCell::new(Vec::new()));
        let log = unsent.clone();
        let events = Rc::new(Recorder::new().on_frame(move |conn, frame| {
            log.borrow_mut().push(conn.unsent());
            conn.append(frame).map_err(|e| e.to_string())?;
            Ok(())
        }));
        // Each 40-byte reply passes OUT/2 = 32 on its own, so it is written before the next
        // frame is handed over: the burst never has to fit in OUT at once.
        let server = listen(&events, packet_spec(64, 64));
        let mut client = connect(server.addr).await;
        let frames = [packet(40, 1), packet(40, 2), packet(40, 3)];
        send(&mut client, &frames.concat()).await;
        assert_eq!(receive(&mut client, 120).await, frames.concat());
        assert_eq!(*unsent.borrow(), [0, 0, 0]);
        let conn = events.first_conn().await;
        assert!(events.closes_of(conn.id).is_empty());
        server.stop.fire();
    });
}

#[test]
fn output_larger_than_out_is_refused_and_the_connection_stays_open() {
    const OUT: usize = 100;
    run_local(|| async {
        let refused = Rc::new(RefCell::new(Vec::new()));
        let log = refused.clone();
        let events = Rc::new(Recorder::new().on_frame(move |conn, frame| {
            match conn.append(&[7; OUT + 1]) {
                Err(OutputError::TooLarge { len, limit }) => log.borrow_mut().push((len, limit)),
                other => panic!("expected TooLarge, got {other:?}"),
            }
            // The buffer is untouched by the refused message, and usable.
            assert_eq!(conn.unsent(), 0);
            conn.append(frame).map_err(|e| e.to_string())?;
            Ok(())
        }));
        let server = listen(&events, packet_spec(64, OUT));
        let mut client = connect(server.addr).await;
        for tag in 1..=2 {
            send(&mut client, &packet(10, tag)).await;
            assert_eq!(receive(&mut client, 10).await, packet(10, tag));
        }
        assert_eq!(*refused.borrow(), [(OUT + 1, OUT), (OUT + 1, OUT)]);
        let conn = events.first_conn().await;
        assert!(!conn.is_closing());
        assert!(events.closes_of(conn.id).is_empty());
        server.stop.fire();
    });
}

#[test]
fn a_client_that_never_reads_is_closed_with_enobufs() {
    const OUT: usize = 64 << 10;
    run_local(|| async {
        let outcome: Rc<RefCell<Option<OutputError>>> = Rc::new(RefCell::new(None));
        let result = outcome.clone();
        // The first frame starts a task that commits for as long as the connection takes
        // it, the way a script pushing updates to a stalled player would.
        let events = Rc::new(Recorder::new().on_frame(move |conn, _| {
            let (conn, result) = (conn.clone(), result.clone());
            glommio::spawn_local(async move {
                let chunk = vec![b'x'; 16 << 10];
                loop {
                    if let Err(err) = conn.append(&chunk) {
                        *result.borrow_mut() = Some(err);
                        break;
                    }
                    futures_lite::future::yield_now().await;
                }
            })
            .detach();
            Ok(())
        }));
        let server = listen(&events, packet_spec(64, OUT));
        let mut client = connect(server.addr).await;
        send(&mut client, &packet(5, 1)).await;

        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::ENOBUFS);
        assert_eq!(events.closes_of(conn.id), [libc::ENOBUFS]);
        assert!(
            matches!(
                *outcome.borrow(),
                Some(OutputError::SlowConsumer { limit: OUT })
            ),
            "{:?}",
            outcome.borrow()
        );
        // Once it does read, the client finds its connection closed.
        let (_, end) = read_to_end(&mut client).await;
        assert!(matches!(end, End::Eof | End::Reset));
        server.stop.fire();
    });
}

#[test]
fn a_client_that_half_closes_still_gets_its_replies() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen(&events, packet_spec(64, 256));
        let mut client = connect(server.addr).await;
        let frames = [packet(12, 1), packet(13, 2)];
        send(&mut client, &frames.concat()).await;
        client.shutdown(std::net::Shutdown::Write).await.unwrap();
        // The end of its input does not cut the replies to what came before it.
        assert_eq!(read_to_end(&mut client).await, (frames.concat(), End::Eof));
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, 0);
        assert_eq!(events.frames_of(conn.id), frames);
        server.stop.fire();
    });
}

#[test]
fn a_flush_interval_holds_replies_until_a_forced_flush() {
    run_local(|| async {
        // An interval far longer than the test: only the first flush and `request_flush`
        // (`socket.commit(nil)`) can get anything out in time.
        let events = Rc::new(
            Recorder::new()
                .on_accept(|conn| {
                    conn.commit_ms.set(3_600_000);
                    true
                })
                .on_frame(|conn, frame| {
                    conn.append(frame).map_err(|e| e.to_string())?;
                    if frame[4] == 2 {
                        conn.request_flush();
                    }
                    Ok(())
                }),
        );
        let server = listen(&events, packet_spec(64, 256));
        let mut client = connect(server.addr).await;
        send(&mut client, &packet(6, 1)).await;
        assert_eq!(receive(&mut client, 6).await, packet(6, 1));
        // The reply to frame 3 waits for the interval; frame 2 forces both out, in order.
        send(&mut client, &packet(7, 3)).await;
        let conn = events.first_conn().await;
        events
            .until("frame 3", |_| events.frames_of(conn.id).len() == 2)
            .await;
        send(&mut client, &packet(8, 2)).await;
        assert_eq!(
            receive(&mut client, 15).await,
            [packet(7, 3), packet(8, 2)].concat()
        );
        server.stop.fire();
    });
}

#[test]
fn an_encoder_writing_in_place_is_flushed_and_held_to_out() {
    const OUT: usize = 100;
    run_local(|| async {
        // The FFI path: reserve room, write into it, then count the bytes with `advance`.
        let events = Rc::new(Recorder::new().on_frame(|conn, frame| {
            let (at, room) = conn.reserve_raw(frame.len()).expect("room while open");
            assert!(room >= frame.len());
            // SAFETY: `reserve_raw` handed out `room` writable bytes at `at`.
            unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), at, frame.len()) };
            assert_eq!(conn.advance(frame.len()).unwrap(), frame.len());
            // One message longer than OUT is refused, and counts for nothing.
            conn.reserve_raw(OUT + 1).expect("room while open");
            assert!(matches!(
                conn.advance(OUT + 1),
                Err(OutputError::TooLarge { len, limit: OUT }) if len == OUT + 1
            ));
            assert_eq!(conn.unsent(), frame.len());
            Ok(())
        }));
        let server = listen(&events, packet_spec(64, OUT));
        let mut client = connect(server.addr).await;
        for tag in 1..=2 {
            send(&mut client, &packet(9, tag)).await;
            assert_eq!(receive(&mut client, 9).await, packet(9, tag));
        }
        let conn = events.first_conn().await;
        conn.request_close(0);
        assert!(
            conn.reserve_raw(1).is_none(),
            "room handed out while closing"
        );
        assert_eq!(events.closed_with(conn.id).await, 0);
        server.stop.fire();
    });
}

// ---- accepting, closing, expiry ----

#[test]
fn a_refused_client_is_closed_unread_and_not_reported_closed() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo().on_accept(|_| false));
        let server = listen(&events, packet_spec(64, 64));
        let mut client = connect(server.addr).await;
        send(&mut client, &packet(10, 1)).await;
        let (got, _) = read_to_end(&mut client).await;
        assert!(got.is_empty(), "got {got:?}");
        // Refusing happens inside `accepted`: once the client sees the end, nothing else
        // can follow (no task ever ran for it).
        let conn = events.first_conn().await;
        assert_eq!(
            events.seen(),
            [Seen::Accepted {
                listener: listener_id(1),
                conn: conn.id
            }]
        );
        server.stop.fire();
    });
}

#[test]
fn close_from_a_frame_callback_flushes_what_came_before_then_closes() {
    run_local(|| async {
        let after = Rc::new(RefCell::new(None));
        let log = after.clone();
        let events = Rc::new(Recorder::new().on_frame(move |conn, frame| {
            conn.append(frame).map_err(|e| e.to_string())?;
            conn.append(b"bye").map_err(|e| e.to_string())?;
            conn.request_close(0);
            *log.borrow_mut() = Some(conn.append(b"too late"));
            Ok(())
        }));
        let server = listen(&events, packet_spec(64, 64));
        let mut client = connect(server.addr).await;
        // Two frames in one read: the second is never handed over, the connection is closing.
        let (first, second) = (packet(8, 1), packet(8, 2));
        send(&mut client, &[first.clone(), second].concat()).await;
        let (got, end) = read_to_end(&mut client).await;
        assert_eq!(got, [&first[..], b"bye"].concat());
        assert_eq!(end, End::Eof);

        let conn = events.first_conn().await;
        assert!(matches!(*after.borrow(), Some(Err(OutputError::Closing))));
        assert_eq!(events.closed_with(conn.id).await, 0);
        assert_eq!(events.closes_of(conn.id), [0]);
        assert_eq!(events.frames_of(conn.id), [first]);
        server.stop.fire();
    });
}

#[test]
fn an_idle_connection_expires_with_etimedout() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo().on_accept(|conn| {
            conn.expire_ms.set(Some(30));
            true
        }));
        let server = listen(&events, packet_spec(64, 64));
        let mut client = connect(server.addr).await;
        let (got, end) = read_to_end(&mut client).await;
        assert_eq!((got, end), (vec![], End::Eof));
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::ETIMEDOUT);
        assert_eq!(events.closes_of(conn.id), [libc::ETIMEDOUT]);
        server.stop.fire();
    });
}

#[test]
fn a_frame_dribbled_past_the_deadline_closes_with_etimedout() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let limits = Limits {
            deadline_ms: 300,
            ..Limits::default()
        };
        let server = listen_with(&events, packet_spec(64, 64), limits);
        let mut client = connect(server.addr).await;
        // A whole frame in two parts well within the deadline is answered...
        let frame = packet(8, 1);
        send(&mut client, &frame[..3]).await;
        glommio::timer::sleep(Duration::from_millis(50)).await;
        send(&mut client, &frame[3..]).await;
        assert_eq!(receive(&mut client, 8).await, frame);
        // ...the next one, one byte every 50 ms, is not: each byte would restart an idle
        // timeout, the deadline counts from the frame's first byte.
        let next = packet(16, 2);
        for byte in &next[..3] {
            send(&mut client, &[*byte]).await;
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::ETIMEDOUT);
        // The client sees the end (a reset: its bytes were left unread).
        read_to_end(&mut client).await;
        server.stop.fire();
    });
}

#[test]
fn a_connection_over_perip_is_closed_before_the_owner_hears_of_it() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let limits = Limits {
            perip: Some(1),
            ..Limits::default()
        };
        let server = listen_with(&events, packet_spec(64, 64), limits);
        let mut first = connect(server.addr).await;
        send(&mut first, &packet(5, 1)).await;
        assert_eq!(receive(&mut first, 5).await, packet(5, 1));
        let mut second = connect(server.addr).await;
        assert_eq!(read_to_end(&mut second).await, (vec![], End::Eof));
        assert_eq!(events.conns().len(), 1, "the refused one reached the owner");
        // The first goes on; once it ends its place is free again.
        send(&mut first, &packet(6, 2)).await;
        assert_eq!(receive(&mut first, 6).await, packet(6, 2));
        drop(first);
        let conn = events.first_conn().await;
        events.closed_with(conn.id).await;
        let mut third = connect(server.addr).await;
        send(&mut third, &packet(7, 3)).await;
        assert_eq!(receive(&mut third, 7).await, packet(7, 3));
        server.stop.fire();
    });
}

#[test]
fn an_idle_connection_expires_even_while_a_write_to_it_is_stuck() {
    run_local(|| async {
        // A client sends one request and then neither reads nor sends: the server's replies
        // fill the socket buffers, and the connection task waits on a write that will never
        // finish. The idle timeout must still end it (OUT is large, so no ENOBUFS).
        let events = Rc::new(
            Recorder::new()
                .on_accept(|conn| {
                    conn.expire_ms.set(Some(300));
                    true
                })
                .on_frame(|conn, _| {
                    let conn = conn.clone();
                    glommio::spawn_local(async move {
                        let chunk = vec![b'x'; 64 << 10];
                        // Commit until output stays unsent (the write is stuck), then stop.
                        while conn.unsent() < 1 << 20 && conn.append(&chunk).is_ok() {
                            futures_lite::future::yield_now().await;
                        }
                    })
                    .detach();
                    Ok(())
                }),
        );
        let server = listen(&events, packet_spec(64, 64 << 20));
        let mut client = connect(server.addr).await;
        send(&mut client, &packet(5, 1)).await;
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::ETIMEDOUT);
        assert_eq!(events.closes_of(conn.id), [libc::ETIMEDOUT]);
        let (_, end) = read_to_end(&mut client).await;
        assert!(matches!(end, End::Eof | End::Reset));
        server.stop.fire();
    });
}

#[test]
fn a_frame_the_owner_cannot_decode_closes_with_ebadmsg() {
    run_local(|| async {
        let events =
            Rc::new(Recorder::new().on_frame(|_, _| Err("not a BSON document".to_string())));
        let server = listen(&events, packet_spec(64, 64));
        let mut client = connect(server.addr).await;
        send(&mut client, &[packet(6, 1), packet(6, 2)].concat()).await;
        let (got, _) = read_to_end(&mut client).await;
        assert!(got.is_empty(), "got {got:?}");
        let conn = events.first_conn().await;
        assert_eq!(events.closed_with(conn.id).await, libc::EBADMSG);
        assert_eq!(events.closes_of(conn.id), [libc::EBADMSG]);
        // The failing frame is the last one handed over.
        assert_eq!(events.frames_of(conn.id), [packet(6, 1)]);
        server.stop.fire();
    });
}

#[test]
fn stopping_the_accept_loop_ends_it_and_frees_the_port() {
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let socket = listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Notify::default();
        let endpoint = Endpoint {
            id: listener_id(1),
            addr,
            frame: packet_spec(64, 64),
            gate: Gate::new(listener_id(1), Limits::default()),
            websocket: None,
        };
        let task = glommio::spawn_local(listener::accept_loop(
            events.clone(),
            endpoint,
            Some(socket),
            stop.clone(),
        ));
        // A connection accepted before the stop keeps running after it.
        let mut client = connect(addr).await;
        events.first_conn().await;
        stop.fire();
        within("the accept loop to stop", task).await;
        send(&mut client, &packet(5, 1)).await;
        assert_eq!(receive(&mut client, 5).await, packet(5, 1));
        let refused = glommio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "the port still accepts after the stop");
    });
}

// ---- join ----

#[test]
fn join_reports_connected_and_then_carries_frames_both_ways() {
    run_local(|| async {
        let peer = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = peer.local_addr().unwrap();
        let events = Rc::new(Recorder::echo());
        let conn = Conn::new(events.next_conn_id(), packet_spec(64, 64));
        listener::join(&events, conn.clone(), Destination::Address(addr), PATIENCE);
        // `join` reports nothing before its caller gets to run on.
        assert!(events.seen().is_empty());

        let mut far = within("the joined connection", peer.accept())
            .await
            .unwrap();
        events
            .until("connected", |seen| seen == [Seen::Connected(conn.id)])
            .await;
        assert_eq!(conn.peer.get(), Some(addr));
        assert!(conn.local.get().is_some());

        // A commit from outside any callback (another task) wakes the connection.
        conn.append(&packet(6, 9)).unwrap();
        assert_eq!(receive(&mut far, 6).await, packet(6, 9));
        // And what the far end sends is framed and echoed.
        send(&mut far, &packet(7, 1)).await;
        assert_eq!(receive(&mut far, 7).await, packet(7, 1));
        assert_eq!(events.frames_of(conn.id), [packet(7, 1)]);

        far.shutdown(std::net::Shutdown::Write).await.unwrap();
        assert_eq!(events.closed_with(conn.id).await, 0);
        assert_eq!(events.closes_of(conn.id), [0]);
    });
}

#[test]
fn join_by_host_name_looks_it_up_off_the_core_and_connects() {
    run_local(|| async {
        // Listen where `localhost` resolves first on this machine (127.0.0.1 or ::1).
        let first = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 0))
            .unwrap()
            .next()
            .unwrap();
        let peer = glommio::net::TcpListener::bind(first).unwrap();
        let port = peer.local_addr().unwrap().port();
        let url = BrokerUrl::parse(&format!("tcp://localhost:{port}?packet=64,64")).unwrap();
        let to = Destination::of(url).unwrap();
        assert!(
            matches!(to, Destination::Name(_)),
            "a name is looked up by join"
        );
        let events = Rc::new(Recorder::echo());
        let conn = Conn::new(events.next_conn_id(), packet_spec(64, 64));
        listener::join(&events, conn.clone(), to, PATIENCE);
        let mut far = within("the joined connection", peer.accept())
            .await
            .unwrap();
        events
            .until("connected", |seen| seen == [Seen::Connected(conn.id)])
            .await;
        send(&mut far, &packet(7, 1)).await;
        assert_eq!(receive(&mut far, 7).await, packet(7, 1));
    });
}

#[test]
fn join_to_a_closed_port_reports_closed_with_econnrefused() {
    run_local(|| async {
        // A port that was just free: bound, then released, so nobody listens there.
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let events = Rc::new(Recorder::new());
        let conn = Conn::new(events.next_conn_id(), packet_spec(64, 64));
        listener::join(&events, conn.clone(), Destination::Address(addr), PATIENCE);
        assert_eq!(events.closed_with(conn.id).await, libc::ECONNREFUSED);
        assert_eq!(events.seen(), [Seen::Closed(conn.id, libc::ECONNREFUSED)]);
        assert_eq!(conn.errno.get(), libc::ECONNREFUSED);
        assert!(conn.is_closing());
    });
}

// ---- UDP ----

#[test]
fn a_udp_endpoint_reports_one_packet_datagrams_and_drops_the_rest() {
    run_local(|| async {
        let id = listener_id(1);
        let socket = udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        udp::prebind(id, socket);
        // Answer each datagram from the endpoint's own socket, as `return v` does.
        let events = Rc::new(Recorder::new().on_datagram(|endpoint, message, from| {
            udp::send(endpoint, message, from).unwrap();
        }));
        let stop = Notify::default();
        let endpoint = Endpoint {
            id,
            addr,
            frame: packet_spec(64, 64),
            gate: Gate::new(listener_id(1), Limits::default()),
            websocket: None,
        };
        let task = glommio::spawn_local(udp::serve(events.clone(), endpoint, stop.clone()));

        let client = glommio::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from: SocketAddr = client.local_addr().unwrap();
        let mut declared_long = packet(12, 1);
        declared_long.truncate(9);
        let not_one_packet: [Vec<u8>; 5] = [
            declared_long,                         // says 12 bytes, is 9
            [packet(6, 2), packet(6, 3)].concat(), // two frames in one datagram
            vec![4, 0, 0, 0],                      // a header and nothing else
            vec![1, 2],                            // not even a header
            packet(65, 4),                         // longer than IN: cut short, so dropped
        ];
        for bad in &not_one_packet {
            client.send_to(bad, addr).await.unwrap();
        }
        let good = packet(64, 5);
        client.send_to(&good, addr).await.unwrap();

        let mut echo = [0u8; 128];
        let (n, _) = within("the udp echo", client.recv_from(&mut echo))
            .await
            .unwrap();
        assert_eq!(&echo[..n], &good[..]);
        // Datagrams from one socket over loopback keep their order: the bad ones came
        // first, so had any been reported it would be here already.
        assert_eq!(
            events.seen(),
            [Seen::Datagram {
                endpoint: id,
                message: good,
                framing: Framing::Packet,
                from,
            }]
        );
        stop.fire();
        within("the udp endpoint to stop", task).await;
        assert!(
            udp::send(id, b"x", from).is_err(),
            "the sender outlived the endpoint"
        );
    });
}

#[test]
fn a_sealed_reply_counts_against_out_and_encrypted_frames_arrive_opened() {
    use crate::codec::crypto::Crypto;
    const OUT: usize = 64;
    let key = std::sync::Arc::new(Crypto::from_key(b"net test key"));
    let sealer = key.clone();
    run_local(move || async move {
        // Each frame is committed back as a document, sealed with the connection's key. A
        // 40-byte document seals to 4 + 48 bytes (fits OUT); a 64-byte one to 4 + 64 (not).
        let events = Rc::new(
            Recorder::new()
                .on_accept(move |conn| {
                    conn.set_crypto(Some(sealer.clone()));
                    true
                })
                .on_frame(|conn, frame| {
                    let sealed = conn.commit_document(frame);
                    if frame.len() == 64 {
                        assert!(matches!(
                            sealed,
                            Err(OutputError::TooLarge {
                                len: 68,
                                limit: OUT
                            })
                        ));
                    } else {
                        assert_eq!(sealed.unwrap(), 52);
                    }
                    Ok(())
                }),
        );
        let server = listen(&events, packet_spec(128, OUT));
        let mut client = connect(server.addr).await;
        let mut sealed = bytes::BytesMut::new();
        key.seal_frame(&packet(40, 1), &mut sealed).unwrap();
        send(&mut client, &sealed).await;
        send(&mut client, &packet(64, 2)).await;
        send(&mut client, &packet(40, 3)).await;
        let replies = receive(&mut client, 2 * 52).await;
        assert_eq!(key.open_frame(&replies[..52]).unwrap(), packet(40, 1));
        assert_eq!(key.open_frame(&replies[52..]).unwrap(), packet(40, 3));
        // The encrypted frame reached the owner opened, the plain ones as they were.
        let conn = events.first_conn().await;
        assert_eq!(
            events.frames_of(conn.id),
            [packet(40, 1), packet(64, 2), packet(40, 3)]
        );
        server.stop.fire();
    });
}

#[test]
fn a_connection_task_stays_small() {
    // Every idle connection holds its task (issue #15 item 5: <= 2 KiB per idle connection,
    // BENCHMARKS.md "Memory per idle connection"): 592 bytes while the loop's clock was kept
    // across its awaits, 1000 before the task was split into plain functions.
    run_local(|| async {
        let events = Rc::new(Recorder::echo());
        let server = listen(&events, packet_spec(4096, 10240));
        let stream = connect(server.addr).await;
        let conn = Conn::new(events.next_conn_id(), packet_spec(4096, 10240));
        let task = super::conn::serve(events.clone(), conn, stream);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 480, "a connection's task grew to {size} bytes");
        drop(task);
        server.stop.fire();
    });
}
