//! The `stage-nats` thread: one tokio current-thread runtime driving the async-nats client.
//! It connects (retrying, with the client's backoff, for as long as the process runs),
//! subscribes to this member's inbox and identity subjects, delivers arriving messages into
//! the cores' inboxes (`node::peers::deliver`), publishes what the cores queued, listens to
//! the heartbeats of the stage ids the cores asked for (`Outgoing::Watch`) and sends this
//! member's heartbeats, one per hosted stage id. Only this thread waits on the network.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event, ServerAddr};

use crate::config::NatsAuth;
use futures_lite::StreamExt;

use super::{
    heartbeat_subject, Cluster, Outgoing, IDENTITY_PERIODS, IDENTITY_PREFIX, MEMBER_SUBJECT_PREFIX,
};
use crate::node::Node;

/// How often the outgoing loop looks up to notice a shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// The most outgoing messages taken from the cores' queue per look.
const OUTGOING_BATCH: usize = 64;

pub(super) fn run(node: Arc<Node>, cluster: Arc<Cluster>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!("cluster: cannot start the NATS thread's runtime: {err}");
            return;
        }
    };
    runtime.block_on(serve(node, cluster));
}

/// The client's options: this member's name, reconnects forever, credentials from the URLs
/// and from the files of `#cluster`'s object entry, and connection events turned into the
/// `connected` flag and one log line per change.
async fn options(cluster: &Arc<Cluster>, addrs: &[ServerAddr]) -> std::io::Result<ConnectOptions> {
    let events = cluster.clone();
    let mut options = ConnectOptions::new()
        .name(&cluster.me)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let cluster = events.clone();
            async move { cluster.event(event) }
        });
    // async-nats reads credentials from its options only: take them from the first URL that
    // has some (`user:password@` or a lone `token@`).
    if let Some(addr) = addrs.iter().find(|a| a.username().is_some()) {
        let user = addr.username().unwrap_or_default().to_string();
        options = match addr.password() {
            Some(pass) => options.user_and_password(user, pass.to_string()),
            None => options.token(user),
        };
    }
    with_auth_files(options, &cluster.settings.auth).await
}

/// Adds the TLS and authentication files (`#cluster`'s object entry). A file that cannot be
/// read is an error naming it; certificates themselves are checked by the TLS handshake.
async fn with_auth_files(
    mut options: ConnectOptions,
    auth: &NatsAuth,
) -> std::io::Result<ConnectOptions> {
    let named = |what: &str, path: &str, err: std::io::Error| {
        std::io::Error::new(err.kind(), format!("`#cluster` {what} file {path}: {err}"))
    };
    let readable = |what: &str, path: &str| {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|err| named(what, path, err))
    };
    if let Some(ca) = &auth.ca {
        readable("ca", ca)?;
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&auth.cert, &auth.key) {
        readable("cert", cert)?;
        readable("key", key)?;
        options = options
            .add_client_certificate(cert.into(), key.into())
            .require_tls(true);
    }
    if let Some(nkey) = &auth.nkey {
        let seed = std::fs::read_to_string(nkey).map_err(|err| named("nkey", nkey, err))?;
        options = options.nkey(seed.trim().to_string());
    }
    if let Some(creds) = &auth.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|err| named("creds", creds, err))?;
    }
    Ok(options)
}

impl Cluster {
    fn event(&self, event: Event) {
        match event {
            Event::Connected => {
                if !self.connected.swap(true, Ordering::AcqRel) {
                    tracing::info!("cluster member {}: connected to NATS", self.me);
                }
                if let Some(direct) = &self.direct {
                    direct.reconnected();
                }
            }
            Event::Disconnected => {
                if let Some(direct) = &self.direct {
                    direct.close();
                }
                let stopping = self.stopping.load(Ordering::Acquire);
                if self.connected.swap(false, Ordering::AcqRel) && !stopping {
                    tracing::warn!(
                        "cluster member {}: lost the NATS connection; reconnecting (messages to other nodes are unrouted meanwhile)",
                        self.me
                    );
                }
            }
            Event::Closed => {
                self.connected.store(false, Ordering::Release);
                if let Some(direct) = &self.direct {
                    direct.close();
                }
            }
            // Every failed reconnect attempt reports one: the outage was logged once already.
            Event::ClientError(err) if !self.connected.load(Ordering::Acquire) => {
                tracing::debug!("cluster member {}: NATS: {err}", self.me)
            }
            other => tracing::warn!("cluster member {}: NATS: {other}", self.me),
        }
    }
}

async fn serve(node: Arc<Node>, cluster: Arc<Cluster>) {
    let Some(mut outgoing) = cluster.receiver.lock().unwrap().take() else {
        return;
    };
    let mut addrs = Vec::new();
    for url in &cluster.settings.servers {
        match url.parse::<ServerAddr>() {
            Ok(addr) => addrs.push(addr),
            Err(err) => tracing::error!("cluster: `#cluster` entry {url}: {err}"),
        }
    }
    if addrs.is_empty() {
        return;
    }
    let options = match options(&cluster, &addrs).await {
        Ok(options) => options,
        Err(err) => {
            tracing::error!("cluster member {}: cannot use NATS: {err}", cluster.me);
            return;
        }
    };
    let client = match options.connect(addrs.clone()).await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!("cluster member {}: cannot use NATS: {err}", cluster.me);
            return;
        }
    };
    let identity = client
        .subscribe(format!("{IDENTITY_PREFIX}{}", cluster.me))
        .await;
    let inbox = client
        .subscribe(format!("{MEMBER_SUBJECT_PREFIX}{}", cluster.me))
        .await;
    let (mut identity, mut inbox) = match (identity, inbox) {
        (Ok(h), Ok(i)) => (h, i),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!("cluster member {}: cannot subscribe: {err}", cluster.me);
            return;
        }
    };
    tracing::info!(
        "cluster member {}: joining the cluster through {} NATS server(s)",
        cluster.me,
        cluster.settings.servers.len()
    );

    tokio::spawn(super::direct::keep(cluster.clone(), addrs));
    let c = cluster.clone();
    tokio::spawn(async move {
        while let Some(msg) = identity.next().await {
            c.heard(&msg.payload, Instant::now());
        }
    });
    let (c, n) = (cluster.clone(), node.clone());
    tokio::spawn(async move {
        while let Some(msg) = inbox.next().await {
            c.received(&n, &msg.payload, msg.reply.as_deref(), false);
        }
    });
    let (c, n, hb) = (cluster.clone(), node.clone(), client.clone());
    tokio::spawn(async move {
        // One heartbeat per hosted stage id, on that id's subject: only the members that
        // send to the id hear it.
        let frames: Vec<(String, bytes::Bytes)> = n
            .stages
            .hosted_ids()
            .iter()
            .map(|id| (heartbeat_subject(id), bytes::Bytes::from(c.heartbeat(id))))
            .collect();
        let identity = bytes::Bytes::from(c.identity());
        let mut tick = tokio::time::interval(c.settings.notify);
        let mut ticks = 0u32;
        loop {
            tick.tick().await;
            c.sweep(Instant::now());
            let open = n.announce(
                || format!("cluster member {}", c.me),
                c.settings.suspend.as_deref(),
            );
            if !c.connected.load(Ordering::Acquire) {
                continue;
            }
            if open {
                for (subject, frame) in &frames {
                    if let Err(err) = hb.publish(subject.clone(), frame.clone()).await {
                        tracing::trace!("cluster heartbeat not sent: {err}");
                    }
                }
            }
            // The identity is not membership: suspended or overloaded, the name is still
            // taken.
            if ticks.is_multiple_of(IDENTITY_PERIODS) {
                let subject = format!("{IDENTITY_PREFIX}{}", c.me);
                if let Err(err) = hb.publish(subject, identity.clone()).await {
                    tracing::trace!("cluster identity not sent: {err}");
                }
            }
            ticks = ticks.wrapping_add(1);
        }
    });

    // One timer for the whole loop (a `timeout` per message registered and cancelled a timer
    // each time), and every message queued since the last wake-up taken at once.
    let mut look_up = tokio::time::interval(SHUTDOWN_POLL);
    let mut batch = Vec::with_capacity(OUTGOING_BATCH);
    while !node.is_shutting_down() {
        let received = futures_lite::future::or(
            async { Some(outgoing.recv_many(&mut batch, OUTGOING_BATCH).await) },
            async {
                look_up.tick().await;
                None
            },
        )
        .await;
        match received {
            None => continue,
            Some(0) => break,
            Some(_) => {}
        }
        for out in batch.drain(..) {
            match out {
                Outgoing::Publish {
                    subject,
                    reply,
                    payload,
                } => {
                    let sent = match reply {
                        Some(reply) => client.publish_with_reply(subject, reply, payload).await,
                        None => client.publish(subject, payload).await,
                    };
                    if let Err(err) = sent {
                        node.count_unrouted(&format!("a message to another node ({err})"));
                    }
                }
                Outgoing::Watch(group) => {
                    tokio::spawn(watch(client.clone(), node.clone(), cluster.clone(), group));
                }
            }
        }
    }
    // Whatever was handed over before the shutdown still goes out; the connection closing
    // after that is no outage.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    cluster.stopping.store(true, Ordering::Release);
}

/// How long after subscribing to a stage id's heartbeats its hosts count as known: one
/// notify period (every live host publishes once in it) and a quarter more for the
/// hosts' timers not being in step with ours.
fn learning_time(notify: Duration) -> Duration {
    notify + notify / 4
}

/// Listens to the heartbeats of `group` for as long as the process runs, and routes the
/// messages held for it once its hosts are known (`Cluster::release`). A subscription that
/// fails leaves nobody known: the held messages are unrouted, the next ones too.
async fn watch(client: async_nats::Client, node: Arc<Node>, cluster: Arc<Cluster>, group: String) {
    match client.subscribe(heartbeat_subject(&group)).await {
        Ok(mut heartbeats) => {
            let c = cluster.clone();
            tokio::spawn(async move {
                while let Some(msg) = heartbeats.next().await {
                    c.heard(&msg.payload, Instant::now());
                }
            });
            // The server has the subscription once it answered a ping sent after it; a flush
            // that cannot finish (connection lost) is bounded by the expiry.
            let _ = tokio::time::timeout(cluster.settings.expiry, client.flush()).await;
        }
        Err(err) => tracing::warn!(
            "cluster member {}: cannot listen to the heartbeats of `{group}`: {err}",
            cluster.me
        ),
    }
    tokio::time::sleep(learning_time(cluster.settings.notify)).await;
    for why in cluster.release(&group) {
        node.count_unrouted(&format!("`{group}` on another node ({why})"));
    }
}
