//! The sender's reply address and the reply-key rule (spec services.md §0.1), shared by the
//! built-in services. The services never look inside a payload, so it stays opaque bytes.

/// Who sent a message, and where its answers go (spec §0.1 "Reply addressing"): the sender's
/// process number and stage sign, and in a cluster the member it runs in. The services only compare, order and hand it back; the
/// ordering makes every "send to each distinct requester" deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requester {
    /// The process of the node the sender runs in (`process.stage`).
    pub process: u32,
    /// The sender's stage sign (`ss_stage`); may be empty for a sender that has none.
    pub sign: String,
    /// The cluster member (`<node>.<process>`) the sender runs in; `None`: this node.
    pub node: Option<String>,
}

impl Requester {
    pub fn new(process: u32, sign: impl Into<String>) -> Self {
        Requester {
            process,
            sign: sign.into(),
            node: None,
        }
    }

    /// A sender on another node of the cluster (`node`: its member name), or on this one.
    pub fn on_node(process: u32, sign: impl Into<String>, node: Option<String>) -> Self {
        Requester {
            node,
            ..Requester::new(process, sign)
        }
    }
}

/// A message value as it arrived (BSON bytes): echoed back untouched, cheap to clone for
/// broadcasts.
pub type Payload = bytes::Bytes;

/// Spec §0.1: a reply goes to `"<sender_sign>:<callback_id>"` unless the callback id already
/// names its stage (contains `:`). A sender without a sign gets the bare callback id.
pub fn reply_key(sign: &str, callback: &str) -> String {
    if callback.contains(':') || sign.is_empty() {
        callback.to_string()
    } else {
        format!("{sign}:{callback}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_key_prefixes_the_sign_unless_the_callback_names_a_stage() {
        assert_eq!(reply_key("game", "onlogin"), "game:onlogin");
        assert_eq!(reply_key("game", "lobby:onlogin"), "lobby:onlogin");
        assert_eq!(reply_key("", "onlogin"), "onlogin");
    }
}
