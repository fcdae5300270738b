//! index.so against what a studio would use instead, side by side in one run: N `set`s of
//! random ids with random integer scores, each answered with the id's rank (index.so's `set`
//! reply carries it), in batches — versus a Redis sorted set with `ZADD` + `ZREVRANK` per id,
//! pipelined per batch over one connection to a local redis-server.
//!
//! index.so runs in this process (the ranking engine and its sync thread, no Lua or network
//! on its side). Like for like on durability: index.so's default (a batch's replies wait until
//! its log records are `fdatasync`ed) against Redis with AOF `appendfsync always`, and
//! index.so syncing once a second against AOF `appendfsync everysec`. The bench starts its
//! own `redis-server` (from PATH) on a free loopback port for each Redis row, with that
//! configuration and a temporary directory, and stops it after; the machine's Redis is never
//! used. Network transport favours index.so (Redis is reached over loopback TCP); the table
//! says so next to the numbers.
//!
//! Usage: target/release/index-vs-redis [IDS (1000000)] [BATCH (1000)]

use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stage_engine::service::index::{
    Answer, Command, Completion, IndexConfig, IndexService, OpenThread, Outcome, Reply, Request,
    Score, SetItem, SetResult, SyncPolicy, SyncThread, TierSel,
};

struct Workload {
    ids: Vec<String>,
    scores: Vec<i64>,
}

fn workload(n: usize) -> Workload {
    // xorshift: the same workload every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ids = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(format!("user{}", next() % n as u64));
        scores.push((next() % 10_000_000) as i64);
    }
    Workload { ids, scores }
}

struct Figures {
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn figures(total: Duration, n: usize, mut batches: Vec<Duration>) -> Figures {
    batches.sort();
    let at = |q: f64| batches[((batches.len() as f64 * q) as usize).min(batches.len() - 1)];
    Figures {
        ops_per_s: n as f64 / total.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn run_index(w: &Workload, batch: usize, sync: SyncPolicy) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir()?;
    let mut cfg = IndexConfig::new(format!("{}/", dir.path().display()));
    cfg.sync = sync;
    // Sync completions (`Some`) and finished opens (`None`) come here, as to a core's inbox.
    let (tx, done) = mpsc::channel();
    let to = tx.clone();
    let notify = Box::new(move |_core: usize, c: Completion| {
        let _ = to.send(Some(c));
    });
    let thread = SyncThread::start("bench", sync, notify)?;
    let opener = OpenThread::start(
        "bench",
        Box::new(move |_core: usize| {
            let _ = tx.send(None);
        }),
    )?;
    let mut service = IndexService::new(cfg, 0, thread, opener);
    let mut times = Vec::new();
    let started = Instant::now();
    let mut ranked = 0usize;
    for (ids, scores) in w.ids.chunks(batch).zip(w.scores.chunks(batch)) {
        let reqs: Vec<(String, Request)> = ids
            .iter()
            .zip(scores)
            .enumerate()
            .map(|(n, (id, score))| {
                let item = SetItem {
                    id: id.clone(),
                    scores: Some(vec![Score::Int(*score)]),
                    tiers: Default::default(),
                    v: None,
                };
                let req = Request {
                    index: "bench".into(),
                    tier: TierSel::Default,
                    command: Command::Set(vec![item]),
                };
                (format!("#{}", n + 1), req)
            })
            .collect();
        let t = Instant::now();
        let tag = times.len() as u64;
        let answer = match service.execute_batch(reqs, Some("ok".into()), tag) {
            Outcome::Now(r) => r.answer,
            // The replies wait for the sync thread (the first also for the open), as they
            // do on a core.
            Outcome::Held => loop {
                let released = match done.recv()? {
                    Some(c) => service.complete(c),
                    None => service.opened(),
                };
                if let Some(r) = released.into_iter().find(|r| r.tag == tag) {
                    break r.answer;
                }
            },
        };
        times.push(t.elapsed());
        let Answer::Batch(replies) = answer else {
            anyhow::bail!("a batch answered as one reply");
        };
        for (_, reply) in replies {
            if let Reply::Set(results) = reply {
                ranked += results
                    .iter()
                    .filter(|(_, r)| matches!(r, SetResult::Rank(_) | SetResult::Unchanged))
                    .count();
            }
        }
    }
    let total = started.elapsed();
    anyhow::ensure!(
        ranked == w.ids.len(),
        "index.so answered {ranked} of {} sets",
        w.ids.len()
    );
    Ok(figures(total, w.ids.len(), times))
}

fn run_redis(w: &Workload, batch: usize, url: &str) -> anyhow::Result<Figures> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection()?;
    redis::cmd("DEL").arg("stage-bench").query::<()>(&mut con)?;
    let mut times = Vec::new();
    let started = Instant::now();
    let mut ranked = 0usize;
    for (ids, scores) in w.ids.chunks(batch).zip(w.scores.chunks(batch)) {
        let mut pipe = redis::pipe();
        for (id, score) in ids.iter().zip(scores) {
            pipe.cmd("ZADD")
                .arg("stage-bench")
                .arg(*score)
                .arg(id)
                .ignore();
            pipe.cmd("ZREVRANK").arg("stage-bench").arg(id);
        }
        let t = Instant::now();
        let ranks: Vec<Option<i64>> = pipe.query(&mut con)?;
        times.push(t.elapsed());
        ranked += ranks.iter().filter(|r| r.is_some()).count();
    }
    let total = started.elapsed();
    redis::cmd("DEL").arg("stage-bench").query::<()>(&mut con)?;
    anyhow::ensure!(
        ranked == w.ids.len(),
        "redis ranked {ranked} of {}",
        w.ids.len()
    );
    Ok(figures(total, w.ids.len(), times))
}

/// A redis-server of our own on a free loopback port, AOF on with `appendfsync`, in a
/// temporary directory; killed on drop.
struct Redis {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(appendfsync: &str) -> anyhow::Result<Redis> {
        let dir = tempfile::tempdir()?;
        let port = stage_benches::free_port()?;
        let child = Process::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", appendfsync])
            .args(["--save", "", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let url = format!("redis://127.0.0.1:{port}/");
        let mut redis = Redis {
            child,
            url,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = redis::Client::open(redis.url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                return Ok(redis);
            }
            if let Some(status) = redis.child.try_wait()? {
                anyhow::bail!("redis-server exited at start: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let batch: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let w = workload(n);
    println!("{n} set+rank operations on random ids (of {n}), batches of {batch}");
    println!(
        "{:>44} | {:>12} | {:>12} | {:>12}",
        "", "ops/s", "batch p50", "batch p99"
    );
    let row = |name: &str, f: &Figures| {
        println!(
            "{:>44} | {:>12.0} | {:>10.2}ms | {:>10.2}ms",
            name,
            f.ops_per_s,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        )
    };
    let ratio = |name: &str, a: &Figures, b: &Figures| {
        println!(
            "{:>44} | {:>12.2} | {:>12.2} | {:>12.2}",
            name,
            a.ops_per_s / b.ops_per_s,
            a.p50.as_secs_f64() / b.p50.as_secs_f64(),
            a.p99.as_secs_f64() / b.p99.as_secs_f64()
        )
    };
    for (policy, appendfsync, label) in [
        (SyncPolicy::Always, "always", "fdatasync before the reply"),
        (
            SyncPolicy::Interval(Duration::from_secs(1)),
            "everysec",
            "sync every 1 s",
        ),
    ] {
        let index = run_index(&w, batch, policy)?;
        row(&format!("index.so ({label})"), &index);
        let redis = Redis::start(appendfsync)?;
        let theirs = run_redis(&w, batch, &redis.url)?;
        drop(redis);
        row(&format!("redis AOF appendfsync {appendfsync}"), &theirs);
        ratio(
            &format!("ratio index.so / redis ({appendfsync})"),
            &index,
            &theirs,
        );
    }
    Ok(())
}
