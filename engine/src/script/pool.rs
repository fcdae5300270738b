//! The blocking pool: OS threads, apart from the cores, where `thread.new` functions run
//! (spec/stage.md §3.9; DESIGN.md principle 5: blocking work never runs on a core). Each pool
//! thread has its own LuaJIT state with the platform libraries and `%preload`, built when the
//! thread starts; results and `thread.signal` values go back to the calling core's inbox.
//!
//! The pool starts on first use, so a node that never calls `thread.new` has no extra threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use super::host::Host;
use crate::node::Node;

/// A `thread.new` call: its id and its function and arguments in the engine-internal BSON form.
pub struct ThreadJob {
    pub id: u64,
    pub payload: Vec<u8>,
}

#[derive(Default)]
pub struct Pool {
    jobs: OnceLock<Mutex<Sender<ThreadJob>>>,
    next_id: AtomicU64,
}

impl Pool {
    /// How many threads the pool runs: two per core (blocking work waits more than it
    /// computes), at least four.
    pub fn size(cores: usize) -> usize {
        (cores * 2).max(4)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Queues a job, starting the pool on first use.
    pub fn run(self: &Arc<Self>, node: &Arc<Node>, job: ThreadJob) -> std::io::Result<()> {
        let jobs = self.jobs.get_or_init(|| Mutex::new(start(node, self)));
        jobs.lock()
            .unwrap()
            .send(job)
            .map_err(|_| std::io::Error::other("the thread pool has stopped"))
    }
}

fn start(node: &Arc<Node>, pool: &Arc<Pool>) -> Sender<ThreadJob> {
    let (tx, rx) = channel::<ThreadJob>();
    let rx = Arc::new(Mutex::new(rx));
    let size = Pool::size(node.cores());
    for index in 0..size {
        let (node, pool) = (node.clone(), pool.clone());
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("stage-pool-{index}"))
            .spawn(move || worker(index, node, pool, rx));
        if let Err(err) = spawned {
            tracing::error!("cannot start pool thread {index}: {err}");
        }
    }
    tracing::info!(threads = size, "thread pool started");
    tx
}

fn worker(index: usize, node: Arc<Node>, pool: Arc<Pool>, jobs: Arc<Mutex<Receiver<ThreadJob>>>) {
    let span = tracing::info_span!("pool", index);
    let _enter = span.enter();
    let host = match Host::new(&node, &pool, None) {
        Ok(host) => host,
        Err(err) => {
            tracing::error!("pool thread cannot build its Lua state: {err:#}");
            return;
        }
    };
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let job = match jobs.lock().unwrap().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        host.dispatch_thread(job.id, &job.payload);
    }
}
