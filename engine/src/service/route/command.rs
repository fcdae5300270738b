//! What goes into and comes out of the route service (spec services.md §4.2, §4.3): commands
//! already split from their message by the router, and messages to send with their final key.

use std::time::Duration;

use super::parse::Targets;
use crate::service::{Payload, Requester};

#[derive(Debug, Clone, PartialEq)]
pub enum RouteCommand {
    /// `route:@` ← `{subscribe_id = change, ...}`; creates the subscriber record.
    Subscribe(Vec<(String, SubChange)>),
    /// `route:@` ← ms: pause the whole subscriber.
    Pause(Duration),
    /// `route:@` ← nil: remove the subscriber and all its subscriptions.
    Unsubscribe,
    /// `route:@` ← true: keep-alive only.
    KeepAlive,
    /// `route:<targets>` ← value. `key` is the message key as received, `(original_key, ...)`.
    Publish {
        key: String,
        targets: Targets,
        value: Payload,
    },
    /// `route:=` ← `token[?cb1,cb2]`: the answer to a willingness query.
    Claim { token: String },
}

/// The value of one `subscribe_id` in a `route:@` object (spec §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubChange {
    /// A string: add or replace with this callback id.
    Add(String),
    /// BSON null: remove.
    Remove,
    /// true / false: enable / disable.
    Enable(bool),
    /// ms: disabled for this long.
    DisableFor(Duration),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteOutput {
    pub to: Requester,
    pub key: String,
    pub message: RouteMessage,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteMessage {
    /// The willingness query on `"<sub_sign>:route:@"`: args `(original_key, token)`, reply
    /// address `reply_to` (`"<route_sign>:="`).
    Offer {
        original_key: String,
        token: String,
        reply_to: String,
    },
    /// The message itself on `"<sub_sign>:<callback_id>[=ret_cb]"`: args `(original_key,
    /// value...)` (an array value is shifted one place), with the **publisher** as the reply
    /// address, so a handler's return value goes straight back to it.
    Deliver {
        original_key: String,
        value: Payload,
        reply_to: Requester,
    },
    /// To the publisher's `!fail_cb`: `(original_key, value)`; nobody took it.
    Fail {
        original_key: String,
        value: Payload,
    },
}
