//! The lobby example (engine/lua/examples/lobby/) run as shipped — `stage -c
//! engine/lua/examples/lobby/stage.json`, port 8090 — played by real clients that speak
//! through the Rust types packet-defs generated from the same schema (the ones
//! stage-loadtest's `lobby` scenario uses), so every reply is also checked against
//! lobby.packets: login, rooms, a full room refused, chat reaching the other member only,
//! ready/start, scores and the leaderboard's order from index.so, leaving, a closed
//! connection's seat and name given back, and a malformed packet refused by field while the
//! connection lives.
//!
//! The server runs in a fresh directory that links to the repository's `engine/`, so the
//! example's paths resolve as written and its leaderboard (`target/lobby-scores/`, relative
//! to the working directory) starts empty.

use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

#[path = "../../../loadtest/src/lobby_packets.rs"]
mod lobby_packets;

use lobby_packets::{
    Change, Chat, CreateRoom, ErrorCode, JoinRoom, Joined, Leaderboard, LeaveRoom, ListRooms,
    Login, Member, Message, Ready, Room, Said, Score, Scored, Start,
};

const PORT: u16 = 8090;

/// The example's port is fixed: its tests take turns.
static PORT_8090: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start_example() -> (std::sync::MutexGuard<'static, ()>, Server) {
    let turn = PORT_8090.lock().unwrap_or_else(|e| e.into_inner());
    // The previous test's server was killed; the kernel may still hold its listening socket
    // for a moment (its io_uring is torn down after the process is gone), and a connection
    // that lands there is reset. Start once nothing answers on the port.
    wait_until("port 8090 is free", || try_connect(PORT).is_err());
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo_root().join("engine"), dir.path().join("engine")).unwrap();
    let mut server = Server::spawn(
        dir,
        PORT,
        &["-c", "engine/lua/examples/lobby/stage.json"],
        None,
    );
    server.wait_port();
    (turn, server)
}

/// A client: its replies in order, and the news other players cause (`said`, `member`,
/// `start`) set aside until the test asks for them.
struct Player {
    stream: TcpStream,
    news: VecDeque<Message>,
}

fn is_news(m: &Message) -> bool {
    matches!(m, Message::Said(_) | Message::Member(_) | Message::Start(_))
}

impl Player {
    fn connect() -> Player {
        let stream = try_connect(PORT).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Player {
            stream,
            news: VecDeque::new(),
        }
    }

    fn login(name: &str) -> Player {
        let mut p = Player::connect();
        p.send(&Login { name: name.into() }.encode());
        match p.reply() {
            Message::Welcome(w) => assert_eq!(w.name, name),
            other => panic!("login {name}: {other:?}"),
        }
        p
    }

    fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).unwrap();
    }

    /// The next message, checked against lobby.packets by the generated decoder.
    fn read(&mut self) -> Message {
        let frame = read_frame(&mut self.stream).expect("a message from the lobby");
        Message::decode(&frame).unwrap_or_else(|e| panic!("a reply breaks lobby.packets: {e}"))
    }

    /// The reply to the last request (news read on the way is kept).
    fn reply(&mut self) -> Message {
        loop {
            let m = self.read();
            if !is_news(&m) {
                return m;
            }
            self.news.push_back(m);
        }
    }

    fn request(&mut self, frame: &[u8]) -> Message {
        self.send(frame);
        self.reply()
    }

    /// The oldest piece of news (waiting for one if none has come yet).
    fn news(&mut self) -> Message {
        if let Some(m) = self.news.pop_front() {
            return m;
        }
        let m = self.read();
        assert!(is_news(&m), "expected news, got a reply: {m:?}");
        m
    }

    fn error(&mut self, frame: &[u8]) -> (ErrorCode, Option<String>) {
        match self.request(frame) {
            Message::Error(e) => (e.code, e.r#for),
            other => panic!("expected an error: {other:?}"),
        }
    }

    fn joined(&mut self, frame: &[u8]) -> Joined {
        match self.request(frame) {
            Message::Joined(j) => j,
            other => panic!("expected joined: {other:?}"),
        }
    }
}

fn member(room: &str, name: &str, change: Change) -> Message {
    Message::Member(Member {
        room: room.into(),
        name: name.into(),
        change,
    })
}

fn join(room: &str) -> Vec<u8> {
    JoinRoom { room: room.into() }.encode()
}

fn score(p: &mut Player, points: u32) -> Scored {
    match p.request(&Score { points }.encode()) {
        Message::Scored(s) => s,
        other => panic!("expected scored: {other:?}"),
    }
}

#[test]
fn a_full_lobby_round_with_real_clients() {
    let (_turn, _server) = start_example();

    // Login: one connection per name.
    let mut alice = Player::login("alice");
    let (code, request) = alice.error(&Login { name: "bob".into() }.encode());
    assert_eq!(
        (code, request.as_deref()),
        (ErrorCode::AlreadyLoggedIn, Some("login"))
    );
    // Nothing but login before a login.
    let mut stranger = Player::connect();
    assert_eq!(stranger.error(&join("den")).0, ErrorCode::NotLoggedIn);

    // A room of two; the creator is seated.
    assert_eq!(
        alice
            .error(
                &Chat {
                    text: "anyone?".into()
                }
                .encode()
            )
            .0,
        ErrorCode::NotInRoom
    );
    let den = alice.joined(
        &CreateRoom {
            room: "den".into(),
            size: 2,
        }
        .encode(),
    );
    assert_eq!((den.room.as_str(), den.size), ("den", 2));
    assert_eq!(den.members, ["alice"]);
    let (code, request) = alice.error(
        &CreateRoom {
            room: "den".into(),
            size: 3,
        }
        .encode(),
    );
    assert_eq!(
        (code, request.as_deref()),
        (ErrorCode::AlreadyInRoom, Some("create_room"))
    );

    let mut bob = Player::login("bob");
    match bob.request(&ListRooms {}.encode()) {
        Message::Rooms(r) => assert_eq!(
            r.rooms,
            [Room {
                name: "den".into(),
                size: 2,
                members: 1
            }]
        ),
        other => panic!("expected rooms: {other:?}"),
    }
    let (code, _) = bob.error(
        &CreateRoom {
            room: "den".into(),
            size: 4,
        }
        .encode(),
    );
    assert_eq!(code, ErrorCode::RoomExists);
    assert_eq!(bob.joined(&join("den")).members, ["alice", "bob"]);
    assert_eq!(alice.news(), member("den", "bob", Change::Joined));

    // The room is full: the third player is refused by =ticket.
    let mut carol = Player::login("carol");
    let (code, request) = carol.error(&join("den"));
    assert_eq!(
        (code, request.as_deref()),
        (ErrorCode::RoomFull, Some("join_room"))
    );
    assert_eq!(carol.error(&join("nowhere")).0, ErrorCode::NoSuchRoom);
    let (code, _) = carol.error(
        &CreateRoom {
            room: "no spaces".into(),
            size: 2,
        }
        .encode(),
    );
    assert_eq!(code, ErrorCode::BadRoomName);

    // Chat reaches the other member (and not the player outside the room).
    match bob.request(
        &Chat {
            text: "hi alice".into(),
        }
        .encode(),
    ) {
        Message::ChatSent(c) => assert_eq!(c.delivered, 1),
        other => panic!("expected chat_sent: {other:?}"),
    }
    assert_eq!(
        alice.news(),
        Message::Said(Said {
            room: "den".into(),
            from: "bob".into(),
            text: "hi alice".into()
        })
    );

    // Ready, then start when everyone is.
    match alice.request(&Ready { ready: true }.encode()) {
        Message::ReadyOk(r) => assert_eq!((r.ready, r.waiting), (true, 1)),
        other => panic!("expected ready_ok: {other:?}"),
    }
    assert_eq!(bob.news(), member("den", "alice", Change::Ready));
    match bob.request(&Ready { ready: true }.encode()) {
        Message::ReadyOk(r) => assert_eq!((r.ready, r.waiting), (true, 0)),
        other => panic!("expected ready_ok: {other:?}"),
    }
    let start = Message::Start(Start {
        room: "den".into(),
        players: vec!["alice".into(), "bob".into()],
    });
    assert_eq!(bob.news(), start);
    assert_eq!(alice.news(), start);

    // Scores go to index.so; the leaderboard comes back best first.
    assert_eq!(score(&mut alice, 30), Scored { total: 30, rank: 1 });
    assert_eq!(score(&mut bob, 50), Scored { total: 50, rank: 1 });
    assert_eq!(score(&mut alice, 5), Scored { total: 35, rank: 2 });
    assert_eq!(score(&mut carol, 40), Scored { total: 40, rank: 2 });
    match carol.request(&Leaderboard { count: 10 }.encode()) {
        Message::Top(t) => assert_eq!(
            t.entries
                .iter()
                .map(|e| (e.rank, e.name.as_str(), e.score))
                .collect::<Vec<_>>(),
            [(1, "bob", 50), (2, "carol", 40), (3, "alice", 35)]
        ),
        other => panic!("expected top: {other:?}"),
    }

    // Leaving gives the seat back: carol gets in now.
    match bob.request(&LeaveRoom {}.encode()) {
        Message::Left(l) => assert_eq!(l.room, "den"),
        other => panic!("expected left: {other:?}"),
    }
    assert_eq!(alice.news(), member("den", "bob", Change::Left));
    assert_eq!(bob.error(&LeaveRoom {}.encode()).0, ErrorCode::NotInRoom);
    assert_eq!(carol.joined(&join("den")).members, ["alice", "carol"]);
    assert_eq!(alice.news(), member("den", "carol", Change::Joined));

    // A closed connection leaves its room and frees its name.
    drop(alice);
    assert_eq!(carol.news(), member("den", "alice", Change::Left));
    let mut alice = Player::login("alice");
    assert_eq!(alice.joined(&join("den")).members, ["carol", "alice"]);
    assert_eq!(carol.news(), member("den", "alice", Change::Joined));

    // A second login with a name takes over: the older connection is closed and leaves.
    let mut carol_again = Player::login("carol");
    assert!(
        is_closed(&mut carol.stream),
        "the older connection was not closed"
    );
    assert_eq!(alice.news(), member("den", "carol", Change::Left));
    assert_eq!(carol_again.joined(&join("den")).members, ["alice", "carol"]);
    assert_eq!(alice.news(), member("den", "carol", Change::Joined));

    // Nobody got news meant for others.
    assert!(bob.news.is_empty() && carol.news.is_empty() && alice.news.is_empty());
    assert!(carol_again.news.is_empty() && stranger.news.is_empty());
}

#[test]
fn a_malformed_packet_is_refused_by_field_and_the_connection_lives() {
    let (_turn, _server) = start_example();
    let mut p = Player::connect();
    let cases: [(Vec<u8>, &str, &str, &str); 4] = [
        (
            message("login", &[("name", Bson::str(&"x".repeat(25)))]),
            "login",
            "name",
            "longer than 24 bytes",
        ),
        (message("login", &[]), "login", "name", "missing"),
        (
            message(
                "create_room",
                &[("room", Bson::str("den")), ("size", Bson::Int32(1))],
            ),
            "create_room",
            "size",
            "below minimum 2",
        ),
        (
            // Refused for its direction, before its fields (its `name` is missing).
            message("welcome", &[("id", Bson::Int32(1))]),
            "welcome",
            "message",
            "not a client message",
        ),
    ];
    for (packet, request, field, reason) in cases {
        match p.request(&packet) {
            Message::Error(e) => assert_eq!(
                (
                    e.code,
                    e.r#for.as_deref(),
                    e.field.as_deref(),
                    e.reason.as_deref()
                ),
                (
                    ErrorCode::BadPacket,
                    Some(request),
                    Some(field),
                    Some(reason)
                )
            ),
            other => panic!("expected bad_packet: {other:?}"),
        }
    }
    // The same connection is still served.
    match p.request(
        &Login {
            name: "dora".into(),
        }
        .encode(),
    ) {
        Message::Welcome(w) => assert_eq!(w.name, "dora"),
        other => panic!("expected welcome: {other:?}"),
    }
}
