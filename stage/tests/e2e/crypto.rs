//! Socket crypto (spec/stage.md §4.5): a client that encrypts with RustCrypto's ciphers
//! directly (not the engine's code) talks to an encrypting socket and reads its encrypted
//! replies; a listener's key is inherited by its connections; a bad encrypted frame closes
//! only its own connection (EBADMSG); `broker.encrypt/decrypt` make and open the same frames.

use std::io::{Read, Write};
use std::net::TcpStream;

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{AsyncStreamCipher, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use des::TdesEde3;
use kisaseed::SEED;

use crate::harness::*;

const FLAG: u32 = 0x8000_0000;
const KEY: &str = "front door key";

/// The ciphers the client speaks, keyed as the spec says: the key zero-padded to the cipher's
/// key size, the IV a block of spaces.
#[derive(Clone, Copy)]
enum Cipher {
    /// `socket.crypto = "key"`: AES with a 32-byte key, CBC, PKCS#7.
    AesCbc,
    /// `{["DESede/CFB/NoPadding"] = key}`.
    DesEdeCfb,
    /// `{["SEED/CBC/PKCS5Padding"] = key}`.
    SeedCbc,
}

fn key(n: usize) -> Vec<u8> {
    let mut k = KEY.as_bytes().to_vec();
    k.resize(n, 0);
    k
}

impl Cipher {
    fn encrypt(self, plain: &[u8]) -> Vec<u8> {
        match self {
            Cipher::AesCbc => cbc::Encryptor::<Aes256>::new_from_slices(&key(32), &[b' '; 16])
                .unwrap()
                .encrypt_padded_vec_mut::<Pkcs7>(plain),
            Cipher::DesEdeCfb => {
                let mut buf = plain.to_vec();
                cfb_mode::Encryptor::<TdesEde3>::new_from_slices(&key(24), &[b' '; 8])
                    .unwrap()
                    .encrypt(&mut buf);
                buf
            }
            Cipher::SeedCbc => cbc::Encryptor::<SEED>::new_from_slices(&key(16), &[b' '; 16])
                .unwrap()
                .encrypt_padded_vec_mut::<Pkcs7>(plain),
        }
    }

    fn decrypt(self, cipher: &[u8]) -> Vec<u8> {
        match self {
            Cipher::AesCbc => cbc::Decryptor::<Aes256>::new_from_slices(&key(32), &[b' '; 16])
                .unwrap()
                .decrypt_padded_vec_mut::<Pkcs7>(cipher)
                .expect("padding of the server's reply"),
            Cipher::DesEdeCfb => {
                let mut buf = cipher.to_vec();
                cfb_mode::Decryptor::<TdesEde3>::new_from_slices(&key(24), &[b' '; 8])
                    .unwrap()
                    .decrypt(&mut buf);
                buf
            }
            Cipher::SeedCbc => cbc::Decryptor::<SEED>::new_from_slices(&key(16), &[b' '; 16])
                .unwrap()
                .decrypt_padded_vec_mut::<Pkcs7>(cipher)
                .expect("padding of the server's reply"),
        }
    }

    /// The encrypted frame of BSON document `doc`: header (whole frame length | bit 31),
    /// then the ciphertext of the document without its own length field.
    fn seal(self, doc: &[u8]) -> Vec<u8> {
        let body = self.encrypt(&doc[4..]);
        let mut frame = ((4 + body.len()) as u32 | FLAG).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    /// The document inside encrypted frame `frame`.
    fn open(self, frame: &[u8]) -> Bson {
        let header = u32::from_le_bytes(frame[..4].try_into().unwrap());
        assert_eq!(header & FLAG, FLAG, "the reply is flagged as encrypted");
        assert_eq!(
            (header & !FLAG) as usize,
            frame.len(),
            "the length counts the frame"
        );
        let plain = self.decrypt(&frame[4..]);
        let mut doc = ((4 + plain.len()) as u32).to_le_bytes().to_vec();
        doc.extend_from_slice(&plain);
        parse_doc(&doc)
    }
}

/// One frame, plain or encrypted (the length without bit 31).
fn read_any_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("a reply");
    let len = (u32::from_le_bytes(header) & !FLAG) as usize;
    let mut frame = header.to_vec();
    frame.resize(len, 0);
    stream.read_exact(&mut frame[4..]).expect("the whole reply");
    frame
}

/// An encrypted reply, opened: the value under `v`.
fn read_sealed(stream: &mut TcpStream, cipher: Cipher) -> Bson {
    let doc = cipher.open(&read_any_frame(stream));
    doc.get("v").cloned().expect("reply with v")
}

fn counter(n: i32) -> Vec<u8> {
    doc(&[("v", Bson::Doc(vec![("n".into(), Bson::Int32(n))]))])
}

fn echoed(reply: &Bson) -> Option<i64> {
    reply.get("echo")?.get("n")?.as_i64()
}

// A listener with a string key: its connections inherit it.
const KEYED_LISTENER: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet=4k,16k', function (s)
  return function (s, data) return { echo = data, crypto = s.crypto } end
end)
l.crypto = 'front door key'
assert(l.crypto == true)
l.close = function (s, errno) logger.info('closed socket ' .. s.id .. ' errno ' .. errno) end
";

// A listener without a key: a plain `{use = ALGO}` frame sets the connection's key; the
// reply to it is already encrypted. `seal`/`open` run broker.encrypt/decrypt.
// (Callbacks cross cores as bytecode without upvalues: the key is spelled out inside.)
const SWITCHING: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet=4k,16k', function (s)
  return function (s, data)
    local KEY = 'front door key'
    if data.use then
      s.crypto = { [data.use] = KEY }
      return { ok = s.crypto }
    elseif data.seal then
      -- A string is committed raw: the frame broker.encrypt made goes out as it is.
      return broker.encrypt({ [data.seal] = KEY }, data.value)
    elseif data.seal_with_socket then
      return broker.encrypt(s, data.value)
    elseif data.open then
      return { opened = broker.decrypt({ [data.open] = KEY }, data.bytes) }
    end
    return { echo = data, crypto = s.crypto }
  end
end)
assert(l.crypto == false)
l.close = function (s, errno) logger.info('closed socket ' .. s.id .. ' errno ' .. errno) end
";

#[test]
fn a_listeners_key_is_inherited_and_replies_are_encrypted() {
    let server = Server::start(&config(""), &[("start.lua", KEYED_LISTENER)]);
    let mut client = server.connect();
    client
        .write_all(&Cipher::AesCbc.seal(&counter(42)))
        .unwrap();
    let reply = read_sealed(&mut client, Cipher::AesCbc);
    assert_eq!(echoed(&reply), Some(42));
    assert_eq!(reply.get("crypto"), Some(&Bson::Bool(true)));
    // A plain frame is still accepted on an encrypting socket (as in the original); the
    // reply is encrypted all the same.
    client.write_all(&counter(7)).unwrap();
    assert_eq!(echoed(&read_sealed(&mut client, Cipher::AesCbc)), Some(7));
    // Many frames in one write, some encrypted, some not, all answered in order.
    let burst: Vec<u8> = (0..50)
        .flat_map(|n| match n % 2 {
            0 => Cipher::AesCbc.seal(&counter(n)),
            _ => counter(n),
        })
        .collect();
    client.write_all(&burst).unwrap();
    for n in 0..50 {
        assert_eq!(
            echoed(&read_sealed(&mut client, Cipher::AesCbc)),
            Some(n as i64)
        );
    }
}

fn switch_to(client: &mut TcpStream, algo: &str, cipher: Cipher) {
    let request = doc(&[("v", Bson::Doc(vec![("use".into(), Bson::str(algo))]))]);
    client.write_all(&request).unwrap();
    let reply = read_sealed(client, cipher);
    assert_eq!(reply.get("ok"), Some(&Bson::Bool(true)), "{algo}");
}

#[test]
fn desede_cfb_and_seed_cbc_clients_get_replies_they_can_decrypt() {
    let server = Server::start(&config(""), &[("start.lua", SWITCHING)]);
    for (algo, cipher) in [
        ("DESede/CFB/NoPadding", Cipher::DesEdeCfb),
        ("SEED/CBC/PKCS5Padding", Cipher::SeedCbc),
        ("AES/CBC/PKCS5Padding", Cipher::AesCbc),
    ] {
        let mut client = server.connect();
        switch_to(&mut client, algo, cipher);
        for n in [1, 1000, 123_456] {
            client.write_all(&cipher.seal(&counter(n))).unwrap();
            let reply = read_sealed(&mut client, cipher);
            assert_eq!(echoed(&reply), Some(n as i64), "{algo}");
            assert_eq!(reply.get("crypto"), Some(&Bson::Bool(true)));
        }
    }
}

fn assert_closed_with_ebadmsg(server: &Server, client: &mut TcpStream, bad: &[u8], nth: usize) {
    client.write_all(bad).unwrap();
    assert!(is_closed(client), "connection stayed open");
    server.wait_log_count(&format!("errno {}", libc::EBADMSG), nth);
}

#[test]
fn a_bad_encrypted_frame_closes_only_its_connection() {
    let server = Server::start(&config(""), &[("start.lua", KEYED_LISTENER)]);
    let mut bystander = server.connect();
    bystander
        .write_all(&Cipher::AesCbc.seal(&counter(1)))
        .unwrap();
    assert_eq!(
        echoed(&read_sealed(&mut bystander, Cipher::AesCbc)),
        Some(1)
    );

    // Padding that does not check out (another key).
    let mut wrong_key = Cipher::SeedCbc.seal(&counter(2));
    wrong_key.truncate(4 + 16);
    wrong_key[..4].copy_from_slice(&(20u32 | FLAG).to_le_bytes());
    assert_closed_with_ebadmsg(&server, &mut server.connect(), &wrong_key, 1);
    // A ciphertext that is not whole blocks.
    let mut ragged = Cipher::AesCbc.seal(&counter(3));
    ragged.pop();
    let len = ragged.len() as u32 | FLAG;
    ragged[..4].copy_from_slice(&len.to_le_bytes());
    assert_closed_with_ebadmsg(&server, &mut server.connect(), &ragged, 2);
    // Decrypts, but what it holds is not BSON.
    let mut not_bson = (0..40u8).collect::<Vec<u8>>();
    not_bson[..4].copy_from_slice(&40u32.to_le_bytes());
    let garbage = Cipher::AesCbc.seal(&not_bson);
    assert_closed_with_ebadmsg(&server, &mut server.connect(), &garbage, 3);

    // The other connection is still served, with its key.
    bystander
        .write_all(&Cipher::AesCbc.seal(&counter(4)))
        .unwrap();
    assert_eq!(
        echoed(&read_sealed(&mut bystander, Cipher::AesCbc)),
        Some(4)
    );
}

#[test]
fn an_encrypted_frame_on_a_socket_without_a_key_closes_it() {
    let server = Server::start(&config(""), &[("start.lua", SWITCHING)]);
    let mut client = server.connect();
    assert_closed_with_ebadmsg(&server, &mut client, &Cipher::AesCbc.seal(&counter(1)), 1);
    let mut other = server.connect();
    other.write_all(&counter(5)).unwrap();
    assert_eq!(echoed(&read_reply(&mut other)), Some(5));
}

#[test]
fn broker_encrypt_and_decrypt_make_and_open_socket_frames() {
    let server = Server::start(&config(""), &[("start.lua", SWITCHING)]);
    let mut client = server.connect();
    let value = Bson::Doc(vec![
        ("n".into(), Bson::Int32(9)),
        ("s".into(), Bson::str("hello")),
    ]);

    // broker.encrypt's frame opens with the crate itself, for each cipher.
    for (algo, cipher) in [
        ("SEED/CBC/PKCS5Padding", Cipher::SeedCbc),
        ("DESede/CFB/NoPadding", Cipher::DesEdeCfb),
        ("AES", Cipher::AesCbc),
    ] {
        let request = doc(&[(
            "v",
            Bson::Doc(vec![
                ("seal".into(), Bson::str(algo)),
                ("value".into(), value.clone()),
            ]),
        )]);
        client.write_all(&request).unwrap();
        let opened = cipher.open(&read_any_frame(&mut client));
        assert_eq!(
            opened.get("v").and_then(|v| v.get("s")),
            Some(&Bson::str("hello"))
        );
        assert_eq!(
            opened
                .get("v")
                .and_then(|v| v.get("n"))
                .and_then(Bson::as_i64),
            Some(9)
        );

        // broker.decrypt opens a frame the crate sealed, to the value under its first key.
        let sealed = cipher.seal(&doc(&[("v", value.clone())]));
        let request = doc(&[(
            "v",
            Bson::Doc(vec![
                ("open".into(), Bson::str(algo)),
                ("bytes".into(), Bson::Binary(0, sealed)),
            ]),
        )]);
        client.write_all(&request).unwrap();
        let reply = read_reply(&mut client);
        let opened = reply.get("opened").expect("opened");
        assert_eq!(opened.get("s"), Some(&Bson::str("hello")), "{algo}");
        assert_eq!(opened.get("n").and_then(Bson::as_i64), Some(9));
    }

    // With a socket, broker.encrypt uses that socket's key.
    switch_to(&mut client, "SEED/CBC/PKCS5Padding", Cipher::SeedCbc);
    let request = doc(&[(
        "v",
        Bson::Doc(vec![
            ("seal_with_socket".into(), Bson::Bool(true)),
            ("value".into(), value.clone()),
        ]),
    )]);
    client.write_all(&Cipher::SeedCbc.seal(&request)).unwrap();
    let opened = Cipher::SeedCbc.open(&read_any_frame(&mut client));
    assert_eq!(
        opened.get("v").and_then(|v| v.get("s")),
        Some(&Bson::str("hello"))
    );
}

const MISUSE: &str = "
local l = broker.ready('tcp://127.0.0.1:PORT?packet', function () end)
local u = broker.ready('udp://127.0.0.1:0?packet', function () end)
local function try(what, f)
  local ok, err = pcall(f)
  logger.info(what .. ': ' .. (ok and 'accepted' or tostring(err)))
end
try('udp', function () u.crypto = 'k' end)
try('number', function () l.crypto = 42 end)
try('algo', function () l.crypto = { ['ZLIB/CBC'] = 'k' } end)
try('mode', function () l.crypto = { ['AES/ECB/PKCS5Padding'] = 'k' } end)
try('empty', function () l.crypto = {} end)
try('missing', function () return broker.encrypt(l, { a = 1 }) end)
l.crypto = { ['aes128/cfb'] = 'k' }
logger.info('set: ' .. tostring(l.crypto))
l.crypto = nil
logger.info('cleared: ' .. tostring(l.crypto) .. ' udp: ' .. tostring(u.crypto))
logger.info('not a frame: ' .. broker.decrypt('k', 'xyz'))
";

#[test]
fn crypto_misuse_is_a_clear_lua_error_and_udp_refuses_it() {
    let server = Server::start(&config(""), &[("start.lua", MISUSE)]);
    server.wait_log("udp: ");
    server.wait_log("not a frame: xyz");
    let log = server.log();
    for expected in [
        "udp: ",
        "UDP sockets do not support crypto",
        "number: ",
        "expected a key string, a {[\"ALGO/MODE/PADDING\"] = key} table or nil, got integer",
        "unknown cipher `ZLIB`",
        "unknown cipher mode `ECB`",
        "the table names no cipher",
        "broker.encrypt: encryption settings are missing",
        "set: true",
        "cleared: false udp: false",
    ] {
        assert!(log.contains(expected), "missing `{expected}` in:\n{log}");
    }
}

#[test]
fn a_table_committed_from_another_core_is_sealed_by_the_owner() {
    // Two cores: a connection's receive callback commits (a group `broker.signal`) to a
    // connection owned by the other core, which seals it with that connection's key.
    if affinity_cpus() < 2 {
        println!("skipped: needs two cores");
        return;
    }
    let server = Server::start(
        r##"{ "#threads": 2, "#startup": [["lua.so+stage"]],
              "lua.so": { "%package": ["."], "%reflush": 0, "lua.so+stage": "start" } }"##,
        &[(
            "start.lua",
            "local l = broker.ready('tcp://127.0.0.1:PORT?packet=4k,16k', function () return true end)
             l.crypto = { ['SEED/CBC/PKCS5Padding'] = 'front door key' }
             l.receive = function (s, data)
               if data.to then broker.signal({ data.to }, { hello = s.id }) return { sent = data.to } end
               return { id = s.id }
             end",
        )],
    );
    let cipher = Cipher::SeedCbc;
    let ask = |client: &mut TcpStream, fields: Vec<(String, Bson)>| {
        client
            .write_all(&cipher.seal(&doc(&[("v", Bson::Doc(fields))])))
            .unwrap();
        read_sealed(client, cipher)
    };
    let open = || {
        let mut client = server.connect();
        let reply = ask(&mut client, vec![("who".into(), Bson::Bool(true))]);
        (reply.get("id").and_then(Bson::as_i64).unwrap(), client)
    };
    let (sender_id, mut sender) = open();
    let (victim_id, mut victim) = server.wait_for("a connection on the other core", || {
        let (id, client) = open();
        (id & 0xFF != sender_id & 0xFF).then_some((id, client))
    });
    let reply = ask(&mut sender, vec![("to".into(), Bson::Int64(victim_id))]);
    assert_eq!(reply.get("sent").and_then(Bson::as_i64), Some(victim_id));
    let pushed = read_sealed(&mut victim, cipher);
    assert_eq!(pushed.get("hello").and_then(Bson::as_i64), Some(sender_id));
}
