//! One scrape's figures: every core asked through its inbox for its [`CoreSnapshot`], the
//! answers awaited together until [`SCRAPE_TIMEOUT`], plus the process-wide counters that
//! already exist outside the cores (listener gates, the CPU budget, BSON limits, unrouted and
//! dropped messages, ODBC). A core that does not answer in time (stuck in a long callback,
//! shutting down) is reported as silent; it never holds up the scrape.

use std::sync::Arc;
use std::time::Duration;

use crate::net::admission::Counters;
use crate::node::reload::Outcome;
use crate::node::stats::CoreSnapshot;
use crate::node::Node;

/// How long a scrape (or a reload) waits for the cores' answers. A core answers between two
/// callbacks; one callback can run up to the CPU budget (`%cpu`, 500 ms by default).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A listener as the process sees it: its label and its gate's counters.
pub struct ListenerInfo {
    pub id: u64,
    pub label: String,
    pub stage: Option<usize>,
    pub gate: Counters,
}

/// Everything one `/metrics` or `/status` answer is made of.
pub struct Scrape {
    /// By core: its answer, or `None` when it did not answer in time.
    pub cores: Vec<Option<CoreSnapshot>>,
    /// Messages waiting in each core's inbox (read from the inbox itself, so a silent core
    /// still shows its backlog).
    pub inbox: Vec<usize>,
    pub listeners: Vec<ListenerInfo>,
    pub budget_exceeded: u64,
    /// BSON documents refused: (too deep, too many elements).
    pub bson_limits: (u64, u64),
    /// Messages that found no receiver, every cause (`Node::unrouted`).
    pub unrouted: u64,
    /// Messages dropped at a full (or closed) inbox.
    pub inbox_dropped: u64,
    /// Posts tried again at a full inbox (`node::retry::RETRIES`).
    pub post_retried: u64,
    /// Blocking calls scripts made on a core (`script::blocking`).
    pub blocking_on_core: u64,
    /// Commits refused (larger than OUT, or to a closing connection).
    pub commits_refused: u64,
    /// ODBC statements: [succeeded, failed].
    pub odbc: [u64; 2],
    pub uptime: Duration,
}

/// Waits for the answers of `asked` (one per core) until one shared deadline.
pub async fn answers<T>(asked: Vec<Option<tokio::sync::oneshot::Receiver<T>>>) -> Vec<Option<T>> {
    let deadline = tokio::time::Instant::now() + SCRAPE_TIMEOUT;
    let mut out = Vec::with_capacity(asked.len());
    for rx in asked {
        let answer = match rx {
            Some(rx) => tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        out.push(answer);
    }
    out
}

pub async fn scrape(node: &Arc<Node>) -> Scrape {
    let cores = answers(node.ask_snapshots()).await;
    let listeners = node
        .listeners()
        .iter()
        .map(|l| ListenerInfo {
            id: l.id,
            label: l.label(),
            stage: l.stage,
            gate: l.gate.counters(),
        })
        .collect();
    let odbc = &crate::service::odbc::QUERIES;
    Scrape {
        cores,
        inbox: node.inbox_depths(),
        listeners,
        budget_exceeded: node.budget.exceeded(),
        bson_limits: crate::codec::bson_limits::counts(),
        unrouted: node.unrouted.load(std::sync::atomic::Ordering::Relaxed),
        inbox_dropped: crate::node::DROPPED.total(),
        post_retried: crate::node::retry::RETRIES.load(std::sync::atomic::Ordering::Relaxed),
        blocking_on_core: crate::node::blocking::ON_CORE.load(std::sync::atomic::Ordering::Relaxed),
        commits_refused: crate::net::conn::COMMITS_REFUSED.total(),
        odbc: [
            odbc[0].load(std::sync::atomic::Ordering::Relaxed),
            odbc[1].load(std::sync::atomic::Ordering::Relaxed),
        ],
        uptime: node.started.elapsed(),
    }
}

/// How long `POST /reload` waits for the reloader's answer (it comes when every core has
/// switched; a core stuck in a callback delays it).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /reload`: pulls the trigger (`Node::request_reload`) and waits for the outcome;
/// `None` when this process has no reloader or the answer did not come in time.
pub async fn reload(node: &Arc<Node>) -> Option<Outcome> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !node.request_reload(Box::new(move |outcome| {
        let _ = tx.send(outcome);
    })) {
        return None;
    }
    tokio::time::timeout(RELOAD_TIMEOUT, rx).await.ok()?.ok()
}
