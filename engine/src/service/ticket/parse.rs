//! The command keys of `=ticket` (spec services.md §3.3) and the textual lease id. The part of a
//! message key after `"<sign>:"` says what is asked; the value is read by the router, which
//! knows the BSON, so this module only splits text.

use std::fmt;

/// What a command key asks for (spec §3.3 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketKey<'a> {
    /// `<cat>=<callback>[?<feedback>]`: one ticket, granted by signalling `<callback>`.
    Request {
        category: &'a str,
        callback: &'a str,
        feedback: Option<&'a str>,
    },
    /// `<cat>[?<feedback>]` with a document `{cb = value, [""] = userdata}`: one ticket per key.
    Batch {
        category: &'a str,
        feedback: Option<&'a str>,
    },
    /// `=<cat>`: send the value to every distinct requester waiting on or holding `<cat>`.
    Broadcast { category: &'a str },
    /// `@<name>`: either a lease (`<name>` is a live [`LeaseId`]) or a category to create or
    /// resize. Only the service knows which leases are live: see `TicketService::resolve_at`.
    At { name: &'a str },
}

/// Why a command key was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Strips `"<sign>:"` (spec §0.1: a service takes only keys with its own prefix).
pub fn command_key<'a>(key: &'a str, sign: &str) -> Option<&'a str> {
    key.strip_prefix(sign)?.strip_prefix(':')
}

/// Splits a command key (the text after `"<sign>:"`).
pub fn parse_key(key: &str) -> Result<TicketKey<'_>, KeyError> {
    if let Some(name) = key.strip_prefix('@') {
        return nonempty(name, key, "`@` needs a category or lease id")
            .map(|name| TicketKey::At { name });
    }
    if let Some(category) = key.strip_prefix('=') {
        return nonempty(category, key, "`=` needs a category")
            .map(|category| TicketKey::Broadcast { category });
    }
    // `?feedback` always comes last; an empty one means "no feedback".
    let (head, feedback) = match key.split_once('?') {
        Some((h, f)) => (h, Some(f).filter(|f| !f.is_empty())),
        None => (key, None),
    };
    match head.split_once('=') {
        Some((category, callback)) => Ok(TicketKey::Request {
            category: nonempty(category, key, "empty category before `=`")?,
            callback: nonempty(callback, key, "empty callback after `=`")?,
            feedback,
        }),
        None => Ok(TicketKey::Batch {
            category: nonempty(head, key, "empty category")?,
            feedback,
        }),
    }
}

fn nonempty<'a>(part: &'a str, key: &str, why: &str) -> Result<&'a str, KeyError> {
    if part.is_empty() {
        Err(KeyError(format!("ticket key `{key}`: {why}")))
    } else {
        Ok(part)
    }
}

/// A request's id, which is also its lease id once granted (spec §3.4: opaque u64 instead of
/// the original's pointer strings). Written `@` + 16 hex digits, the `"@<hex>"` form Lua
/// code sees in `_TICKET`, the feedback and the cancel notice. The fixed width keeps lease
/// ids apart from category names in `@<name>` keys in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl LeaseId {
    /// Reads `<hex>` (the name of an `@<name>` key, without the `@`).
    pub fn from_name(name: &str) -> Option<LeaseId> {
        if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(name, 16).ok().map(LeaseId)
    }

    /// Reads the `"@<hex>"` text form.
    pub fn parse(text: &str) -> Option<LeaseId> {
        LeaseId::from_name(text.strip_prefix('@')?)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_with_and_without_feedback() {
        assert_eq!(
            parse_key("odbc=login"),
            Ok(TicketKey::Request {
                category: "odbc",
                callback: "login",
                feedback: None
            })
        );
        assert_eq!(
            parse_key("odbc=lobby:login?fb"),
            Ok(TicketKey::Request {
                category: "odbc",
                callback: "lobby:login",
                feedback: Some("fb")
            })
        );
        assert_eq!(
            parse_key("odbc=login?"),
            Ok(TicketKey::Request {
                category: "odbc",
                callback: "login",
                feedback: None
            })
        );
    }

    #[test]
    fn batch_broadcast_and_at() {
        assert_eq!(
            parse_key("room1?done"),
            Ok(TicketKey::Batch {
                category: "room1",
                feedback: Some("done")
            })
        );
        assert_eq!(
            parse_key("room1"),
            Ok(TicketKey::Batch {
                category: "room1",
                feedback: None
            })
        );
        assert_eq!(
            parse_key("=room1"),
            Ok(TicketKey::Broadcast { category: "room1" })
        );
        assert_eq!(parse_key("@room1"), Ok(TicketKey::At { name: "room1" }));
    }

    #[test]
    fn malformed_keys_are_errors() {
        for k in ["", "@", "=", "odbc=", "?fb"] {
            assert!(parse_key(k).is_err(), "{k:?} should not parse");
        }
    }

    #[test]
    fn sign_prefix() {
        assert_eq!(command_key("ticket:odbc=cb", "ticket"), Some("odbc=cb"));
        assert_eq!(command_key("tickets:odbc=cb", "ticket"), None);
        assert_eq!(command_key("route:x", "ticket"), None);
    }

    #[test]
    fn lease_id_text_round_trips() {
        let id = LeaseId(0x1000_0000_0000_002a);
        assert_eq!(id.to_string(), "@100000000000002a");
        assert_eq!(LeaseId::parse(&id.to_string()), Some(id));
        assert_eq!(LeaseId::from_name("100000000000002a"), Some(id));
        assert_eq!(LeaseId::parse("100000000000002a"), None);
        assert_eq!(LeaseId::from_name("room1"), None);
        assert_eq!(LeaseId::from_name("2a"), None);
    }
}
