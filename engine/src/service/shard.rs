//! Which core owns which part of a built-in service (issue #5: "each named index / category
//! owned by one core (hash of its name)"). index.so and `=ticket` run one instance per core of
//! the process that hosts them; an index or a category lives in exactly one of them, chosen
//! by a hash of its name, so requests for different names run on different cores while
//! everything about one name stays serialized on one core, with no lock between cores.
//!
//! The rules here are the single source of truth: the router (`script::messaging`) asks them
//! where to post a message, and a core that receives a message it does not own forwards it
//! (messages from other processes arrive at the stage's main core). `=route` is not sharded:
//! a publish must see every subscriber and fall back over dotted prefixes, so it stays one
//! actor on its main core.
//!
//! Lease ids of `=ticket` carry their shard: shard `k` of `n` hands out `FIRST + k + j·n`, so
//! `@<lease>` (an extension or release from a grant handler) goes straight to the core that
//! holds the lease. A category whose name happens to be a lease-shaped 16-digit hex string
//! follows the same rule, so the owner of `@<name>` never depends on whether a lease is live.

use super::index::{parse_batch_key, parse_spec};
use super::ticket::{parse_key, LeaseId, TicketKey};

/// One instance of a sharded service: its position among the process's cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole service in one instance (tests, and services that are not sharded).
    pub const ONE: Shard = Shard { index: 0, count: 1 };
}

/// FNV-1a: tiny, stable across builds and processes (unlike a seeded hasher), and good
/// enough to spread names over a handful of cores.
fn name_hash(name: &str) -> u64 {
    fnv1a(name.as_bytes())
}

/// FNV-1a 64 of `bytes`: the engine's one stable, seedless hash (shard owners here, lotus
/// schema identities, script versions on `/status`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The shard (of `count`) that owns name `name`.
pub fn owner_of_name(name: &str, count: usize) -> usize {
    (name_hash(name) % count.max(1) as u64) as usize
}

/// index.so: the shard owning the index a direct-form id (`CMD?INDEX[/TIER][=callback]`, the
/// service's sign already stripped) or a batch key (`[#n.]CMD?INDEX[/TIER]`) addresses.
/// `None` for anything else: a batch id, whose keys must be looked at one by one.
pub fn index_owner(id: &str, count: usize) -> Option<usize> {
    let head = id.split_once('=').map_or(id, |(h, _)| h);
    let (_, spec) = parse_batch_key(head);
    parse_spec(spec)
        .ok()
        .map(|(_, name, _)| owner_of_name(&name, count))
}

/// The first lease id of shard 0; shard `k` starts at `FIRST_LEASE + k`.
pub const FIRST_LEASE: u64 = 0x1000_0000_0000_0001;

/// The shard that issued lease `id`.
pub fn lease_owner(id: LeaseId, count: usize) -> usize {
    (id.0.wrapping_sub(FIRST_LEASE) % count.max(1) as u64) as usize
}

/// The shard owning a category: by its name, unless the name is shaped like a lease id (then
/// `@<name>` may be either, and both readings must land on the same shard).
pub fn category_owner(name: &str, count: usize) -> usize {
    match LeaseId::from_name(name) {
        Some(id) => lease_owner(id, count),
        None => owner_of_name(name, count),
    }
}

/// `=ticket`: the shard a command key (sign stripped) belongs to. A key that does not parse
/// goes to shard 0, which logs the error.
pub fn ticket_owner(key: &str, count: usize) -> usize {
    match parse_key(key) {
        Ok(TicketKey::Request { category, .. })
        | Ok(TicketKey::Batch { category, .. })
        | Ok(TicketKey::Broadcast { category }) => category_owner(category, count),
        Ok(TicketKey::At { name }) => category_owner(name, count),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_always_has_the_same_owner_and_names_spread() {
        assert_eq!(owner_of_name("rank", 4), owner_of_name("rank", 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[owner_of_name(&format!("room{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "uneven spread: {seen:?}");
        assert_eq!(owner_of_name("anything", 1), 0);
        assert_eq!(owner_of_name("anything", 0), 0, "no division by zero");
    }

    #[test]
    fn index_commands_go_to_their_index_and_batches_need_their_keys() {
        let n = 8;
        let rank = owner_of_name("rank", n);
        assert_eq!(index_owner("set?rank", n), Some(rank));
        assert_eq!(index_owner("g?rank/2=cb", n), Some(rank));
        assert_eq!(index_owner("#3.range?rank/1", n), Some(rank));
        assert_eq!(index_owner("total:rank/", n), Some(rank));
        assert_eq!(
            index_owner("get?sub/dir/idx", n),
            Some(owner_of_name("sub/dir/idx", n))
        );
        assert_eq!(index_owner("oncommit", n), None, "a batch callback");
        assert_eq!(index_owner("set?../x", n), None, "an invalid name");
    }

    #[test]
    fn leases_come_back_to_the_shard_that_issued_them() {
        for count in 1..6 {
            for k in 0..count {
                for j in 0..5 {
                    let id = LeaseId(FIRST_LEASE + k as u64 + j * count as u64);
                    assert_eq!(lease_owner(id, count), k);
                    let key = format!("@{}", &id.to_string()[1..]);
                    assert_eq!(ticket_owner(&key, count), k);
                }
            }
        }
    }

    #[test]
    fn ticket_keys_go_to_their_category() {
        let n = 5;
        let odbc = owner_of_name("odbc", n);
        assert_eq!(ticket_owner("odbc=login", n), odbc);
        assert_eq!(ticket_owner("odbc=lobby:login?fb", n), odbc);
        assert_eq!(ticket_owner("odbc?fb", n), odbc);
        assert_eq!(ticket_owner("=odbc", n), odbc);
        assert_eq!(ticket_owner("@odbc", n), odbc);
        assert_eq!(ticket_owner("=", n), 0, "a bad key goes to shard 0");
    }
}
