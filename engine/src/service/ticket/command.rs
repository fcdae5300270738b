//! What goes into and comes out of the ticket service: commands already split from their
//! message (key by `parse`, BSON value by the router) and the messages to send (spec
//! services.md §3.3). Each output names its destination and final message key, so the router
//! only encodes and sends.

use std::time::Duration;

use super::parse::LeaseId;
use crate::service::{Payload, Requester};

/// One message to the service (spec §3.3 table).
#[derive(Debug, Clone, PartialEq)]
pub enum TicketCommand {
    /// `@<cat>` ← `(limit, close_ms)`: create or resize; `close_after` = `close_ms` (none: never).
    Configure {
        category: String,
        limit: i64,
        close_after: Option<Duration>,
    },
    /// `<cat>=<callback>[?<feedback>]` ← value.
    Request {
        category: String,
        callback: String,
        feedback: Option<String>,
        /// The message key as received, echoed in the feedback.
        request_key: String,
        value: Payload,
    },
    /// `<cat>[?<feedback>]` ← `{cb = value, ..., [""] = userdata}`; entries in document order.
    Batch {
        category: String,
        feedback: Option<String>,
        request_key: String,
        entries: Vec<(String, Payload)>,
        userdata: Option<Payload>,
    },
    /// `=<cat>` ← value.
    Broadcast { category: String, value: Payload },
    /// `@<lease>` ← ms: `ms > 0` extends the lease to now + ms, `ms <= 0` releases it (or
    /// withdraws a request still waiting). This is also where a granted handler's numeric
    /// return value lands (spec §3.3, open question 14).
    Lease { lease: LeaseId, ms: i64 },
}

/// Why a request was refused; the feedback carries `false` for all of them (spec §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such category, or it has closed.
    UnknownCategory,
    /// A negative-limit category with every slot held.
    CategoryFull,
    /// The service already tracks `capacity` requests (spec §3.2).
    QueueFull,
}

/// Accepted (granted or queued) under this lease id, or refused.
pub type Outcome = Result<LeaseId, Refusal>;

/// One message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketOutput {
    pub to: Requester,
    /// The full message key, e.g. `"game:onlogin"` or `"game:ticket:@"`.
    pub key: String,
    pub message: TicketMessage,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TicketMessage {
    /// The grant (spec §3.3): the stored value (an array is spread into arguments) plus
    /// `_TICKET = "@<lease>"`, sent as a request whose reply address is `reply_to`
    /// (`"<sign>:@<lease>"`), so `stage.signal(nil, ms)` and a returned number reach the lease.
    Grant {
        lease: LeaseId,
        reply_to: String,
        value: Payload,
    },
    /// Single-request feedback `(request_key, "@<lease>" | false)`.
    Feedback {
        request_key: String,
        result: Outcome,
    },
    /// Batch feedback `(request_key, {cb = "@<lease>" | false, [""] = userdata})`.
    BatchFeedback {
        request_key: String,
        results: Vec<(String, Outcome)>,
        userdata: Option<Payload>,
    },
    /// `("cancel", {["@<lease>"] = "<callback>", ...})` on `"<sign>:ticket:@"`: leases that
    /// expired and queued requests that were cancelled, batched per owner (spec §3.3, §3.4).
    Cancel { leases: Vec<(LeaseId, String)> },
    /// The value of a `=<cat>` broadcast, on `"<sign>:ticket:<cat>"`.
    Broadcast { value: Payload },
}
