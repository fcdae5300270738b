//! The bytes of one persisted mutation: the full state of one id after a command, or its
//! removal. Logging the resulting state (not the command) makes replay deterministic and
//! idempotent: replaying a record that a snapshot already contains changes nothing, which is
//! what lets a crash between "snapshot renamed" and "log truncated" be harmless.
//!
//! Framing: `len: u32 LE`, `crc32(payload): u32 LE`, `payload` — so a torn or corrupt tail is
//! recognised on open. Integers are little-endian; the format is ours (spec open question 12:
//! old files need not be readable).

use bytes::Bytes;

use super::command::TIERS;
use super::order::{Score, TierKey};

/// Largest payload we accept when reading; anything larger is treated as corruption rather
/// than an allocation request.
pub const MAX_RECORD: usize = 1 << 30;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const INT: u8 = 0;
const STR: u8 = 1;

/// One id's state: its value and, per tier, its keys in rank order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub v: Option<Bytes>,
    pub tiers: [Vec<TierKey>; TIERS],
}

#[derive(Debug, PartialEq)]
pub enum Mutation {
    Put(String, Entry),
    Remove(String),
}

/// CRC-32 (IEEE, reflected), table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends one framed PUT record.
pub fn encode_put(out: &mut Vec<u8>, id: &str, e: &Entry) {
    frame(out, |p| {
        p.push(PUT);
        put_bytes(p, id.as_bytes());
        match &e.v {
            Some(v) => {
                p.push(1);
                put_bytes(p, v);
            }
            None => p.push(0),
        }
        for tier in &e.tiers {
            p.extend_from_slice(&(tier.len() as u32).to_le_bytes());
            for k in tier {
                match &k.score {
                    Score::Int(n) => {
                        p.push(INT);
                        p.extend_from_slice(&n.to_le_bytes());
                    }
                    Score::Str(s) => {
                        p.push(STR);
                        put_bytes(p, s);
                    }
                }
                p.extend_from_slice(&k.seq.to_le_bytes());
            }
        }
    });
}

/// Appends one framed REMOVE record.
pub fn encode_remove(out: &mut Vec<u8>, id: &str) {
    frame(out, |p| {
        p.push(REMOVE);
        put_bytes(p, id.as_bytes());
    });
}

fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    body(out);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Outcome of reading one frame at the start of `buf`.
pub enum Next {
    /// A valid record and the number of bytes it took.
    Record(Mutation, usize),
    /// Nothing left.
    End,
    /// Incomplete, checksum mismatch or undecodable: everything from here is unusable.
    Bad(&'static str),
}

pub fn next_record(buf: &[u8]) -> Next {
    if buf.is_empty() {
        return Next::End;
    }
    if buf.len() < 8 {
        return Next::Bad("incomplete header");
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if len > MAX_RECORD || len > buf.len() - 8 {
        return Next::Bad("incomplete record");
    }
    let payload = &buf[8..8 + len];
    if crc32(payload) != crc {
        return Next::Bad("checksum mismatch");
    }
    match decode(payload) {
        Some(m) => Next::Record(m, 8 + len),
        None => Next::Bad("undecodable record"),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

fn decode(payload: &[u8]) -> Option<Mutation> {
    let mut r = Reader(payload);
    let m = match r.u8()? {
        PUT => {
            let id = r.string()?;
            let v = match r.u8()? {
                0 => None,
                1 => Some(Bytes::copy_from_slice(r.bytes()?)),
                _ => return None,
            };
            let mut e = Entry {
                v,
                ..Entry::default()
            };
            for tier in e.tiers.iter_mut() {
                let n = r.u32()? as usize;
                // Cap the pre-allocation by what the payload could possibly hold.
                tier.reserve(n.min(r.0.len() / 9));
                for _ in 0..n {
                    let score = match r.u8()? {
                        INT => Score::Int(r.u64()? as i64),
                        STR => Score::Str(r.bytes()?.into()),
                        _ => return None,
                    };
                    tier.push(TierKey {
                        score,
                        seq: r.u64()?,
                    });
                }
            }
            Mutation::Put(id, e)
        }
        REMOVE => Mutation::Remove(r.string()?),
        _ => return None,
    };
    r.0.is_empty().then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip() {
        let mut e = Entry {
            v: Some(Bytes::from_static(b"\x10v\0\x01\0\0\0")),
            ..Entry::default()
        };
        e.tiers[0] = vec![TierKey {
            score: Score::Int(-3),
            seq: 9,
        }];
        e.tiers[3] = vec![TierKey {
            score: Score::str("xyz"),
            seq: 2,
        }];
        let mut buf = Vec::new();
        encode_put(&mut buf, "p1", &e);
        encode_remove(&mut buf, "p2");
        let Next::Record(m, n) = next_record(&buf) else {
            panic!()
        };
        assert_eq!(m, Mutation::Put("p1".into(), e));
        let Next::Record(m2, n2) = next_record(&buf[n..]) else {
            panic!()
        };
        assert_eq!(m2, Mutation::Remove("p2".into()));
        assert!(matches!(next_record(&buf[n + n2..]), Next::End));
        assert!(matches!(next_record(&buf[..n - 1]), Next::Bad(_)));
        let mut bad = buf.clone();
        bad[12] ^= 1;
        assert!(matches!(next_record(&bad), Next::Bad("checksum mismatch")));
    }
}
