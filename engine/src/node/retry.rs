//! Posts that must not be lost at a full core inbox. A post carrying a reply someone waits
//! for (an index.so completion, a lotus store answer, a `thread.new` result, a curl.so reply,
//! a lock grant from another process) would leave that waiter hanging for ever if it were
//! dropped like a stage message, so it is tried again until the core takes it: after
//! [`RETRY_FIRST`], the pause doubling up to [`RETRY_MAX`]; only a closed inbox (the core or
//! node stopped) ends the tries.
//!
//! **A service thread may wait, a core never.** [`until_taken`] sleeps the calling thread,
//! which is the back-pressure an overloaded core should put on the threads that write to it;
//! on a core it would stall that core's own work (and a core waiting for itself would never
//! drain), so there it gives up at once and the caller drops the post as before. A task on a
//! core awaits [`until_taken_async`] instead, which pauses on a glommio timer while the core
//! goes on draining its inbox. Every retry is counted ([`RETRIES`],
//! `stage_limit_hits_total{limit="post_retried"}`) and the first one of the process is logged
//! with what was retried.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::mailbox::SendError;
use super::post::PostKind;
use super::{runtime, CoreMsg, Node};

/// The first pause of a post that found its core's inbox full; it doubles on each retry.
pub const RETRY_FIRST: Duration = Duration::from_micros(50);

/// The longest pause between two tries of one post.
pub const RETRY_MAX: Duration = Duration::from_millis(10);

/// Tries of a post that found the core's inbox full (the metrics' limit hits).
pub static RETRIES: AtomicU64 = AtomicU64::new(0);

/// Whether a retry was logged in this process (once).
static LOGGED: AtomicBool = AtomicBool::new(false);

/// Counts a retry of `what` to core `core` (whose inbox held `queued`) and logs the first one
/// of the process.
fn count(core: usize, queued: usize, what: &str) {
    RETRIES.fetch_add(1, Ordering::Relaxed);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            core,
            "{what} found core {core}'s inbox full ({queued} messages queued): retrying until \
             the core takes it (logged once per process; counted in \
             stage_limit_hits_total{{limit=\"post_retried\"}})"
        );
    }
}

/// Calls `send` until the core takes the post: again after a growing pause while its inbox
/// is full; `Ok`, or the `Closed` that ends it. On a core it never waits: a full inbox is
/// returned at once.
pub fn until_taken(
    core: usize,
    what: &str,
    mut send: impl FnMut() -> Result<(), SendError>,
) -> Result<(), SendError> {
    let mut pause = RETRY_FIRST;
    loop {
        match send() {
            Err(SendError::Full(queued)) if runtime::try_current().is_none() => {
                count(core, queued, what);
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// [`until_taken`] for a task on a core: the pauses are glommio timers, so the core goes on
/// with its work (draining the very inbox the post waits for) in the meantime.
pub async fn until_taken_async(
    core: usize,
    what: &str,
    mut send: impl FnMut() -> Result<(), SendError>,
) -> Result<(), SendError> {
    let mut pause = RETRY_FIRST;
    loop {
        match send() {
            Err(SendError::Full(queued)) => {
                count(core, queued, what);
                glommio::timer::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// Posts `kind` with `payload` to core `core` until it takes it ([`until_taken`]); a post that
/// is not taken (the inbox closed, or full on a core) is logged as dropped. `true` when taken.
/// Once the node shuts down a full inbox ends the tries: its core may have stopped draining.
pub fn post(node: &Node, core: usize, kind: PostKind, payload: Bytes, what: &str) -> bool {
    let sent = until_taken(core, what, || offer(node, core, kind, &payload));
    taken(node, core, sent)
}

/// Posts `kind` with `payload` to the first core whose inbox has room, for a post that any
/// core can take (a lock grant: the prelude passes it on to the stage's main core). Only when
/// every inbox is full does the thread wait ([`until_taken`]), so one busy core does not hold
/// up the thread that posts (the datagram reader, which also reads heartbeats). `true` when
/// taken.
pub fn post_any(node: &Node, kind: PostKind, payload: Bytes, what: &str) -> bool {
    let sent = until_taken(0, what, || {
        first_with_room(node.cores(), |core| offer(node, core, kind, &payload))
    });
    taken(node, 0, sent)
}

/// One try of a post; once the node shuts down a full inbox counts as closed (its core may
/// have stopped draining), which ends the tries.
fn offer(node: &Node, core: usize, kind: PostKind, payload: &Bytes) -> Result<(), SendError> {
    let payload = payload.clone();
    match node.send(core, CoreMsg::Post { kind, payload }) {
        Err(SendError::Full(_)) if node.is_shutting_down() => Err(SendError::Closed),
        other => other,
    }
}

/// Whether the tries ended with the post taken; a post that was not is logged as dropped.
fn taken(node: &Node, core: usize, sent: Result<(), SendError>) -> bool {
    match sent {
        Ok(()) => true,
        Err(err) => {
            node.log_dropped(core, &err);
            false
        }
    }
}

/// What the tests of the posting threads share: waiting for a thread that runs at its own pace.
#[cfg(test)]
pub mod testing {
    use std::time::Instant;

    use super::*;

    /// Waits until `f` has something; a test fails after 30 s without.
    pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = f() {
                return t;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until a post has found an inbox full and been retried since [`RETRIES`] was
    /// `before`.
    pub fn wait_for_a_retry(before: u64) {
        poll("a retry", || {
            (RETRIES.load(Ordering::Relaxed) > before).then_some(())
        });
    }
}

/// Offers a post to cores `0..cores` in turn: `Ok` from the first that takes it; `Full` when
/// every inbox was full (the caller retries); else the last refusal (`Closed`).
fn first_with_room(
    cores: usize,
    mut send: impl FnMut(usize) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let mut refused = Err(SendError::Closed);
    let mut full = None;
    for core in 0..cores {
        match send(core) {
            Ok(()) => return Ok(()),
            Err(SendError::Full(queued)) => full = Some(queued),
            Err(err) => refused = Err(err),
        }
    }
    match full {
        Some(queued) => Err(SendError::Full(queued)),
        None => refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A post any core may take goes to the first with room, and waits only when all are full.
    #[test]
    fn a_post_for_any_core_skips_the_full_ones() {
        let mut offered = Vec::new();
        let r = first_with_room(3, |core| {
            offered.push(core);
            if core == 0 {
                Err(SendError::Full(5))
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok());
        assert_eq!(offered, [0, 1]);
        let all_full = first_with_room(2, |_| Err(SendError::Full(7)));
        assert!(matches!(all_full, Err(SendError::Full(7))));
        let one_closed = first_with_room(2, |core| match core {
            0 => Err(SendError::Closed),
            _ => Err(SendError::Full(1)),
        });
        assert!(
            matches!(one_closed, Err(SendError::Full(1))),
            "still worth retrying"
        );
        let all_closed = first_with_room(2, |_| Err(SendError::Closed));
        assert!(matches!(all_closed, Err(SendError::Closed)));
    }

    /// A full inbox is tried again, counted once per try, until the core takes the post.
    #[test]
    fn a_full_inbox_is_tried_again_until_the_post_is_taken() {
        let before = RETRIES.load(Ordering::Relaxed);
        let mut tries = 0;
        let r = until_taken(0, "a test post", || {
            tries += 1;
            if tries < 4 {
                Err(SendError::Full(1))
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok());
        assert_eq!(tries, 4);
        // Other tests may retry at the same time: at least these three.
        assert!(RETRIES.load(Ordering::Relaxed) >= before + 3);
    }

    /// On a core the post waits on a timer, not the thread: the core's other tasks run
    /// meanwhile (here, the one that drains the inbox), and the post arrives after what was
    /// queued before it. A thread sleep would never let the draining task run.
    #[test]
    fn a_task_on_a_core_waits_while_the_core_drains_its_inbox() {
        let got = crate::net::testing::run_local(|| async {
            let (mailbox, inbox) = super::super::mailbox::channel::<u32>(1).unwrap();
            mailbox.send(1, 1).unwrap();
            let tries = std::rc::Rc::new(std::cell::Cell::new(0));
            let counted = tries.clone();
            let post = glommio::spawn_local(async move {
                until_taken_async(0, "a test post", || {
                    counted.set(counted.get() + 1);
                    mailbox.send(2, 1)
                })
                .await
            });
            let mut got = Vec::new();
            while got.len() < 2 {
                // Drains only once the post has found the inbox full and waits to retry.
                if tries.get() > 1 {
                    got.extend(inbox.try_take());
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            post.await.unwrap();
            got
        });
        assert_eq!(got, [1, 2]);
    }

    /// A closed inbox (the core stopped) ends the tries at once.
    #[test]
    fn a_closed_inbox_ends_the_tries() {
        let mut tries = 0;
        let r = until_taken(0, "a test post", || {
            tries += 1;
            if tries < 3 {
                Err(SendError::Full(1))
            } else {
                Err(SendError::Closed)
            }
        });
        assert!(matches!(r, Err(SendError::Closed)));
        assert_eq!(tries, 3);
    }
}
