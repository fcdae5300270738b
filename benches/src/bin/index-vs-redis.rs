//! index.so against what a studio would use instead, side by side in one run: N `set`s of
//! random ids with random integer scores, each answered with the id's rank (index.so's `set`
//! reply carries it), in batches — versus a Redis sorted set with `ZADD` + `ZREVRANK` per id,
//! pipelined per batch over one connection to a local redis-server.
//!
//! index.so runs in this process (the ranking engine itself, no Lua or network on its side),
//! with its default durability: the batch's log records are written and `fdatasync`ed before
//! the replies. Redis here keeps nothing on disk. Both differences favour Redis on durability
//! and index.so on transport; the table says so next to the numbers. A second index.so row
//! syncs once a second instead (`SyncPolicy::Interval`), to separate the engine from fsync.
//!
//! Usage: target/release/index-vs-redis [IDS (1000000)] [BATCH (1000)] [REDIS_URL]

use std::time::{Duration, Instant};

use stage_engine::service::index::{
    Command, IndexConfig, IndexService, Reply, Request, Score, SetItem, SetResult, SyncPolicy,
    TierSel,
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
    let mut service = IndexService::new(cfg);
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
        let replies = service.execute_batch(reqs);
        times.push(t.elapsed());
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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let batch: usize = args.next().map_or(Ok(1000), |s| s.parse())?;
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let w = workload(n);
    println!("{n} set+rank operations on random ids (of {n}), batches of {batch}");
    println!(
        "{:>38} | {:>12} | {:>12} | {:>12}",
        "", "ops/s", "batch p50", "batch p99"
    );
    let index = run_index(&w, batch, SyncPolicy::Always)?;
    let relaxed = run_index(&w, batch, SyncPolicy::Interval(Duration::from_secs(1)))?;
    let row = |name: &str, f: &Figures| {
        println!(
            "{:>38} | {:>12.0} | {:>10.2}ms | {:>10.2}ms",
            name,
            f.ops_per_s,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        )
    };
    row("index.so (in process, fdatasync)", &index);
    row("index.so (in process, sync every 1 s)", &relaxed);
    match run_redis(&w, batch, &url) {
        Ok(redis) => {
            row("redis ZADD+ZREVRANK (pipelined)", &redis);
            println!(
                "{:>38} | {:>12.2} | {:>12.2} | {:>12.2}",
                "ratio index.so / redis",
                index.ops_per_s / redis.ops_per_s,
                index.p50.as_secs_f64() / redis.p50.as_secs_f64(),
                index.p99.as_secs_f64() / redis.p99.as_secs_f64()
            );
        }
        Err(err) => println!("redis at {url} not measured: {err}"),
    }
    Ok(())
}
