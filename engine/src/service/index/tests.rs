//! Service-level tests: persistence across a simulated kill, torn tails, the fixed `total`,
//! batches, a 200k-id ranking checked against a sorted model, the sync thread (group commit:
//! one sync for the batches that queued behind another; replies held until their sync; a
//! failing sync answered with null and the index refused) and the open thread (requests
//! waiting for an open run in arrival order; a failed open answers every one of them null and
//! the next request opens again).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use super::open::{OpenFn, OpenJob};
use super::sync::SyncFn;
use super::*;

fn cfg(dir: &tempfile::TempDir) -> IndexConfig {
    IndexConfig::new(format!("{}/", dir.path().display()))
}

/// What the shard's threads tell "core 0" (its inbox, in the engine).
enum Event {
    Sync(usize, Completion),
    Open(usize),
}

/// A shard on "core 0" with its own sync and open threads; their notices come to a channel
/// instead of a core's inbox.
struct Svc {
    svc: IndexService,
    events: Receiver<Event>,
    tag: u64,
}

fn start_with(cfg: IndexConfig, sync: SyncFn, open: OpenFn) -> Svc {
    let (tx, events) = mpsc::channel();
    let to = tx.clone();
    let notify = Box::new(move |core: usize, c: Completion| {
        let _ = to.send(Event::Sync(core, c));
    });
    let thread = SyncThread::start_with("test", cfg.sync, sync, notify).unwrap();
    let ring = Box::new(move |core: usize| {
        let _ = tx.send(Event::Open(core));
    });
    let opener = OpenThread::start_with("test", open, ring).unwrap();
    Svc {
        svc: IndexService::new(cfg, 0, thread, opener),
        events,
        tag: 0,
    }
}

fn start(cfg: IndexConfig, sync: SyncFn) -> Svc {
    start_with(cfg, sync, Arc::new(open::load))
}

impl Svc {
    fn new(cfg: IndexConfig) -> Svc {
        start(cfg, Arc::new(|f: &File| f.sync_data()))
    }

    /// Handles the next notice (as the core does its posts): the answers it released.
    fn next(&mut self) -> Vec<Released> {
        match self
            .events
            .recv_timeout(Duration::from_secs(30))
            .expect("a notice")
        {
            Event::Sync(core, c) => {
                assert_eq!(core, 0);
                self.svc.complete(c)
            }
            Event::Open(core) => {
                assert_eq!(core, 0);
                self.svc.opened()
            }
        }
    }

    /// Feeds notices until the answer tagged `tag` is released.
    fn wait(&mut self, tag: u64) -> Answer {
        loop {
            for r in self.next() {
                if r.tag == tag {
                    return r.answer;
                }
            }
        }
    }

    fn outcome(&mut self, tag: u64, o: Outcome) -> Answer {
        match o {
            Outcome::Now(r) => r.answer,
            Outcome::Held => self.wait(tag),
        }
    }

    /// Opens `names` (a read of each, waited for).
    fn open(&mut self, names: &[&str]) {
        for name in names {
            self.execute(req(name, TierSel::Default, Command::Total));
        }
    }

    /// Runs a request to its (released) reply.
    fn execute(&mut self, req: Request) -> Reply {
        self.tag += 1;
        let o = self.svc.execute(req, Some("cb".into()), self.tag);
        match self.outcome(self.tag, o) {
            Answer::One(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn execute_batch(&mut self, reqs: Vec<(String, Request)>) -> Vec<(String, Reply)> {
        self.tag += 1;
        let o = self.svc.execute_batch(reqs, Some("cb".into()), self.tag);
        match self.outcome(self.tag, o) {
            Answer::Batch(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// The shutdown snapshot, waited for.
    fn snapshot_all(&mut self) {
        let rx = self.svc.snapshot_all();
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
        while let Ok(e) = self.events.try_recv() {
            if let Event::Sync(_, c) = e {
                self.svc.complete(c);
            }
        }
    }
}

fn set(index: &str, id: &str, score: i64) -> Request {
    Request {
        index: index.into(),
        tier: TierSel::Default,
        command: Command::Set(vec![SetItem {
            id: id.into(),
            scores: Some(vec![Score::Int(score)]),
            v: Some(bytes::Bytes::from(format!("v{id}"))),
            ..SetItem::default()
        }]),
    }
}

fn req(index: &str, tier: TierSel, command: Command) -> Request {
    Request {
        index: index.into(),
        tier,
        command,
    }
}

fn all(svc: &mut Svc, index: &str) -> Vec<(String, i64, u64)> {
    let r = svc.execute(req(
        index,
        TierSel::One(1),
        Command::ForEach {
            start: 1,
            count: i64::MAX,
        },
    ));
    let Reply::Entries(es) = r else {
        panic!("{r:?}")
    };
    es.into_iter()
        .map(|e| {
            let Score::Int(n) = e.i else { panic!() };
            assert_eq!(e.v.as_deref(), Some(format!("v{}", e.k).as_bytes()));
            (e.k.to_string(), n, e.d)
        })
        .collect()
}

#[test]
fn survives_kill_and_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let n = 500;
    let before = {
        let mut svc = Svc::new(cfg(&dir));
        for i in 0..n {
            let r = svc.execute(set("sub/board", &format!("p{i}"), (i * 7 % 101) as i64));
            assert!(
                matches!(r, Reply::Set(ref v) if v[0].1.d().unwrap() >= 1),
                "{r:?}"
            );
        }
        svc.execute(req(
            "sub/board",
            TierSel::All,
            Command::Del(vec!["p3".into()]),
        ));
        let state = all(&mut svc, "sub/board");
        // Simulate SIGKILL: no snapshot, no close path, just forget the service.
        std::mem::forget(svc);
        state
    };
    assert_eq!(before.len(), n - 1);
    let mut svc = Svc::new(cfg(&dir));
    assert_eq!(all(&mut svc, "sub/board"), before);
    assert_eq!(
        svc.execute(req("sub/board", TierSel::Default, Command::Total)),
        Reply::Total(n as u64 - 1)
    );
    drop(svc);

    // A torn last record (a crash mid-write) plus garbage: complete records all survive.
    let log = dir.path().join("sub/board.log");
    let len = std::fs::metadata(&log).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 1, 2]).unwrap();
    drop(f);
    let mut svc = Svc::new(cfg(&dir));
    assert_eq!(all(&mut svc, "sub/board"), before);
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        len,
        "torn tail truncated"
    );
    // And writing after the repair appends cleanly.
    svc.execute(set("sub/board", "late", 1000));
    drop(svc);
    let mut svc = Svc::new(cfg(&dir));
    let now = all(&mut svc, "sub/board");
    assert_eq!(now[0], ("late".into(), 1000, 1));
    assert_eq!(now.len(), before.len() + 1);
    drop(svc);

    // Cutting the last complete record in half loses exactly that record.
    let len = std::fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let mut svc = Svc::new(cfg(&dir));
    assert_eq!(all(&mut svc, "sub/board"), before);
}

#[test]
fn snapshot_then_log_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir);
    c.snapshot_log_bytes = 4096; // snapshot every few dozen sets
    let mut svc = Svc::new(c.clone());
    for i in 0..300 {
        svc.execute(set("s", &format!("id{}", i % 120), i));
    }
    // Ties across the snapshot boundary: the newest must still rank first after reload.
    svc.execute(set("s", "tieA", 5000));
    svc.execute(set("s", "tieB", 5000));
    let state = all(&mut svc, "s");
    assert_eq!(state[0].0, "tieB");
    assert!(std::fs::metadata(dir.path().join("s.snap")).is_ok());
    assert!(std::fs::metadata(dir.path().join("s.log")).unwrap().len() < 4096);
    std::mem::forget(svc);
    let mut svc = Svc::new(c.clone());
    assert_eq!(all(&mut svc, "s"), state);
    // A new tie after reload still outranks both.
    svc.execute(set("s", "tieC", 5000));
    assert_eq!(all(&mut svc, "s")[0].0, "tieC");
    svc.snapshot_all();
    assert_eq!(
        std::fs::metadata(dir.path().join("s.log")).unwrap().len(),
        0
    );
    drop(svc);
    let mut svc = Svc::new(c);
    assert_eq!(all(&mut svc, "s")[0].0, "tieC");
    assert_eq!(all(&mut svc, "s").len(), state.len() + 1);
}

/// Expected `(id, score)` pairs, best first (the scores are distinct).
fn ranked(model: &std::collections::BTreeMap<String, i64>) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = model.iter().map(|(k, s)| (k.clone(), *s)).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

/// A snapshot too big for one slice, with sets, re-sets and deletes acknowledged between its
/// slices (of ids already encoded, ids not reached yet, ids a removal moves into the encoded
/// part, new ids): the snapshot replaces the whole log, and after a SIGKILL the index reopens
/// from it with every acknowledged value.
#[test]
fn a_snapshot_built_in_slices_while_writes_continue_keeps_every_acknowledged_value() {
    let dir = tempfile::tempdir().unwrap();
    let n = snapshot::SLICE_IDS * 3 + 17;
    let mut model = std::collections::BTreeMap::new();
    {
        let mut svc = Svc::new(cfg(&dir));
        let items = (0..n)
            .map(|i| {
                model.insert(format!("p{i}"), i as i64);
                SetItem {
                    id: format!("p{i}"),
                    scores: Some(vec![Score::Int(i as i64)]),
                    v: Some(bytes::Bytes::from(format!("vp{i}"))),
                    ..SetItem::default()
                }
            })
            .collect();
        svc.execute(req("big", TierSel::Default, Command::Set(items)));
        std::mem::forget(svc);
    }
    // Any log length starts a snapshot: the first write below does.
    let mut c = cfg(&dir);
    c.snapshot_log_bytes = 1;
    let mut svc = Svc::new(c);
    type Model = std::collections::BTreeMap<String, i64>;
    fn write(svc: &mut Svc, model: &mut Model, id: String, score: Option<i64>) {
        match score {
            Some(s) => {
                let r = svc.execute(set("big", &id, s));
                assert!(
                    matches!(r, Reply::Set(ref v) if v[0].1.d().is_some()),
                    "{r:?}"
                );
                model.insert(id, s);
            }
            None => {
                let r = svc.execute(req("big", TierSel::All, Command::Del(vec![id.clone()])));
                assert_eq!(r, Reply::Del(vec![(id.clone(), true)]));
                model.remove(&id);
            }
        }
    }
    write(&mut svc, &mut model, "p0".into(), Some(1_000_000));
    assert!(svc.svc.snapshotting(), "one slice does not hold {n} ids");
    let mut k = 1;
    loop {
        // Encoded already / not reached yet / moved into the encoded part / new.
        write(
            &mut svc,
            &mut model,
            format!("p{k}"),
            Some(1_000_000 + k as i64),
        );
        write(
            &mut svc,
            &mut model,
            format!("p{}", n - 1 - k),
            Some(2_000_000 + k as i64),
        );
        write(&mut svc, &mut model, format!("p{}", 100 + k), None);
        write(
            &mut svc,
            &mut model,
            format!("q{k}"),
            Some(3_000_000 + k as i64),
        );
        k += 1;
        if !svc.svc.snapshot_step() {
            break;
        }
    }
    assert!(k >= 4, "{k} slices");
    // A read behind the snapshot's job: answered once the snapshot is in place.
    assert_eq!(
        svc.execute(req("big", TierSel::Default, Command::Total)),
        Reply::Total(model.len() as u64)
    );
    assert!(!svc.svc.snapshotting());
    assert_eq!(
        std::fs::metadata(dir.path().join("big.log")).unwrap().len(),
        0,
        "the snapshot holds everything the log did"
    );
    std::mem::forget(svc);
    let mut svc = Svc::new(cfg(&dir));
    let got: Vec<(String, i64)> = all(&mut svc, "big")
        .into_iter()
        .map(|(id, s, _)| (id, s))
        .collect();
    assert_eq!(got, ranked(&model));
}

#[test]
fn interval_policy_writes_before_the_reply_and_syncs_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir);
    c.sync = SyncPolicy::Interval(Duration::from_millis(1));
    let syncs = Arc::new(AtomicUsize::new(0));
    let counted = syncs.clone();
    let mut svc = start(
        c.clone(),
        Arc::new(move |f: &File| {
            counted.fetch_add(1, Ordering::SeqCst);
            f.sync_data()
        }),
    );
    svc.execute(set("i", "a", 1));
    // Acknowledged means written: a process kill now loses nothing.
    assert!(std::fs::metadata(dir.path().join("i.log")).unwrap().len() > 0);
    // The thread's timer syncs the log without another write coming along.
    while syncs.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::mem::forget(svc);
    let mut svc = Svc::new(c);
    assert_eq!(all(&mut svc, "i"), vec![("a".into(), 1, 1)]);
}

#[test]
fn total_tiers_and_null_cases() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Svc::new(cfg(&dir));
    let mut item = SetItem {
        id: "a".into(),
        ..SetItem::default()
    };
    item.tiers[0] = Some(vec![Score::Int(1), Score::Int(2)]);
    item.tiers[2] = Some(vec![Score::str("x")]);
    svc.execute(req("t", TierSel::All, Command::Set(vec![item])));
    svc.execute(set("t", "b", 3));
    let total = |svc: &mut Svc, tier| svc.execute(req("t", tier, Command::Total));
    assert_eq!(total(&mut svc, TierSel::Default), Reply::Total(2)); // ids
    assert_eq!(total(&mut svc, TierSel::All), Reply::Total(2));
    assert_eq!(total(&mut svc, TierSel::One(1)), Reply::Total(3)); // tier-1 entries
    assert_eq!(total(&mut svc, TierSel::One(3)), Reply::Total(1));
    assert_eq!(total(&mut svc, TierSel::One(4)), Reply::Total(0));
    let fe = req("t", TierSel::All, Command::ForEach { start: 1, count: 1 });
    assert_eq!(svc.execute(fe), Reply::Null);
    assert_eq!(
        svc.execute(req("../x", TierSel::Default, Command::Total)),
        Reply::Null
    );
    // forEach with count 0 still returns one entry.
    let fe = req(
        "t",
        TierSel::Default,
        Command::ForEach { start: 0, count: 0 },
    );
    let Reply::Entries(es) = svc.execute(fe) else {
        panic!()
    };
    assert_eq!((es.len(), &*es[0].k, es[0].d), (1, "b", 1));
}

#[test]
fn batch_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = Svc::new(cfg(&dir));
    let keys = ["get:b", "#2.get:b", "#1.set:b"];
    // The router's job, done by hand: order the keys, parse each spec, decode each payload.
    let ordered: Vec<(String, Request)> = batch_order(&keys)
        .into_iter()
        .map(|i| {
            let key = keys[i];
            let (kind, index, tier) = parse_spec(parse_batch_key(key).1).unwrap();
            let request = match kind {
                Kind::Set => set(&index, "p", 9),
                _ => req(&index, tier, Command::Get(vec!["p".into()])),
            };
            (key.to_string(), request)
        })
        .collect();
    let replies = svc.execute_batch(ordered);
    assert_eq!(
        replies[0],
        (
            "#1.set:b".into(),
            Reply::Set(vec![("p".into(), SetResult::Rank(1))])
        )
    );
    let found = Reply::Get(vec![(
        "p".into(),
        GetResult::Tier {
            v: Some(bytes::Bytes::from("vp")),
            scores: vec![(Score::Int(9), 1)],
        },
    )]);
    assert_eq!(replies[1], ("#2.get:b".into(), found.clone()));
    assert_eq!(replies[2], ("get:b".into(), found));
}

/// 200k ids with random updates and deletes: ranks and selects match a sorted model.
#[test]
fn many_ids_rank_and_select() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&dir);
    c.sync = SyncPolicy::Interval(std::time::Duration::from_secs(3600));
    c.snapshot_log_bytes = u64::MAX;
    let mut svc = Svc::new(c);
    let mut x = 0x1234_5678_9ABC_DEF0u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 200_000u64;
    // model: id -> (score, seq) ; order = score desc, seq desc
    let mut model: Vec<Option<(i64, u64)>> = vec![None; n as usize];
    let mut seq = 0u64;
    for i in 0..n {
        let s = (rnd() % 50_000) as i64;
        svc.execute(set("big", &i.to_string(), s));
        model[i as usize] = Some((s, seq));
        seq += 1;
    }
    for _ in 0..20_000 {
        let i = rnd() % n;
        if rnd() % 4 == 0 {
            svc.execute(req("big", TierSel::All, Command::Del(vec![i.to_string()])));
            model[i as usize] = None;
        } else {
            let s = (rnd() % 50_000) as i64;
            svc.execute(set("big", &i.to_string(), s));
            if model[i as usize].map(|m| m.0) != Some(s) {
                model[i as usize] = Some((s, seq));
                seq += 1;
            }
        }
    }
    let mut sorted: Vec<(i64, u64, u64)> = model
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.map(|(s, q)| (s, q, i as u64)))
        .collect();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    assert_eq!(
        svc.execute(req("big", TierSel::One(1), Command::Total)),
        Reply::Total(sorted.len() as u64)
    );
    for _ in 0..2_000 {
        let r = (rnd() % sorted.len() as u64) as usize;
        let (s, _, id) = sorted[r];
        let fe = svc.execute(req(
            "big",
            TierSel::Default,
            Command::ForEach {
                start: r as i64 + 1,
                count: 1,
            },
        ));
        let Reply::Entries(es) = fe else { panic!() };
        assert_eq!(
            (&*es[0].k, es[0].d),
            (id.to_string().as_str(), r as u64 + 1)
        );
        let g = svc.execute(req(
            "big",
            TierSel::Default,
            Command::Get(vec![id.to_string()]),
        ));
        let Reply::Get(g) = g else { panic!() };
        let GetResult::Tier { scores, .. } = &g[0].1 else {
            panic!()
        };
        assert_eq!(scores, &vec![(Score::Int(s), r as u64 + 1)]);
    }
}

/// A sync the test opens and closes: each call says it started, then waits for a go.
fn gated() -> (
    SyncFn,
    Receiver<()>,
    mpsc::Sender<io::Result<()>>,
    Arc<AtomicUsize>,
) {
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<io::Result<()>>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let sync: SyncFn = Arc::new(move |f: &File| {
        counted.fetch_add(1, Ordering::SeqCst);
        entered_tx.send(()).unwrap();
        go_rx.lock().unwrap().recv().unwrap()?;
        f.sync_data()
    });
    (sync, entered, go, count)
}

/// The tags a sync completion released (the test's indexes are open already).
fn released_tags(svc: &mut Svc) -> Vec<u64> {
    let c = sync_completion(svc);
    svc.svc.complete(c).into_iter().map(|r| r.tag).collect()
}

fn sync_completion(svc: &mut Svc) -> Completion {
    match svc.events.recv_timeout(Duration::from_secs(30)).unwrap() {
        Event::Sync(_, c) => c,
        Event::Open(_) => panic!("an open, not a sync completion"),
    }
}

#[test]
fn group_commit_one_sync_for_the_batches_queued_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (sync, entered, go, syncs) = gated();
    let mut svc = start(cfg(&dir), sync);
    svc.open(&["g", "h"]);
    let s = &mut svc.svc;
    // The first batch's sync is in progress...
    assert_eq!(
        s.execute(set("g", "a", 1), Some("cb".into()), 1),
        Outcome::Held
    );
    entered.recv().unwrap();
    // ...while four more batches (two indexes) and a read arrive: all held, in order.
    for (tag, (ix, id)) in [("g", "b"), ("h", "c"), ("g", "d"), ("h", "e")]
        .into_iter()
        .enumerate()
    {
        let o = s.execute(set(ix, id, 2), Some("cb".into()), tag as u64 + 2);
        assert_eq!(o, Outcome::Held);
    }
    let read = req("g", TierSel::Default, Command::Total);
    assert_eq!(s.execute(read, Some("cb".into()), 6), Outcome::Held);
    assert_eq!(s.waiting(), 6);
    go.send(Ok(())).unwrap();
    // The first sync releases only the first reply.
    assert_eq!(released_tags(&mut svc), vec![1]);
    // One sync per log for the four queued batches: g and h.
    entered.recv().unwrap();
    go.send(Ok(())).unwrap();
    entered.recv().unwrap();
    go.send(Ok(())).unwrap();
    assert_eq!(released_tags(&mut svc), vec![2, 3, 4, 5, 6]);
    assert_eq!(
        syncs.load(Ordering::SeqCst),
        3,
        "1 + one per log, not one per batch"
    );
    assert_eq!(svc.svc.waiting(), 0);
    // With nothing waiting, a read answers at once.
    let read = req("g", TierSel::Default, Command::Total);
    let Outcome::Now(r) = svc.svc.execute(read, Some("cb".into()), 7) else {
        panic!("a read with no sync pending is answered now")
    };
    assert_eq!(r.answer, Answer::One(Reply::Total(3)));
}

#[test]
fn a_failing_sync_answers_null_and_refuses_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (sync, entered, go, _) = gated();
    let mut svc = start(cfg(&dir), sync);
    svc.open(&["f", "ok"]);
    let s = &mut svc.svc;
    assert_eq!(
        s.execute(set("f", "a", 1), Some("cb".into()), 1),
        Outcome::Held
    );
    entered.recv().unwrap();
    // Behind the failing sync: a write to the same index, and a batch naming it and another.
    assert_eq!(
        s.execute(set("f", "b", 2), Some("cb".into()), 2),
        Outcome::Held
    );
    let batch = vec![
        ("#1.set?f".to_string(), set("f", "c", 3)),
        ("#2.set?ok".to_string(), set("ok", "c", 3)),
    ];
    assert_eq!(s.execute_batch(batch, Some("cb".into()), 3), Outcome::Held);
    go.send(Err(io::Error::other("disk on fire"))).unwrap();
    let c = sync_completion(&mut svc);
    assert_eq!(c.upto, 1);
    assert_eq!(c.failed.len(), 1);
    assert!(c.failed[0].1.contains("disk on fire"), "{:?}", c.failed);
    let released = svc.svc.complete(c);
    assert_eq!(released.len(), 1);
    assert_eq!(
        released[0].answer,
        Answer::One(Reply::Null),
        "never a false ack"
    );
    // The queued jobs: nothing more is written to the broken index; the other one is
    // synced (the gate opens for it) and keeps its reply.
    entered.recv().unwrap();
    go.send(Ok(())).unwrap();
    let c = sync_completion(&mut svc);
    let released = svc.svc.complete(c);
    assert_eq!(released.len(), 2);
    assert_eq!(released[0].answer, Answer::One(Reply::Null));
    let Answer::Batch(b) = &released[1].answer else {
        panic!()
    };
    assert_eq!(b[0], ("#1.set?f".into(), Reply::Null));
    assert_eq!(
        b[1],
        (
            "#2.set?ok".into(),
            Reply::Set(vec![("c".into(), SetResult::Rank(1))])
        )
    );
    // From now on the index is refused at once, without touching its files.
    let len = std::fs::metadata(dir.path().join("f.log")).unwrap().len();
    let Outcome::Now(r) = svc.svc.execute(set("f", "z", 9), Some("cb".into()), 9) else {
        panic!()
    };
    assert_eq!(r.answer, Answer::One(Reply::Null));
    let total = req("f", TierSel::Default, Command::Total);
    let Outcome::Now(r) = svc.svc.execute(total, Some("cb".into()), 10) else {
        panic!()
    };
    assert_eq!(r.answer, Answer::One(Reply::Null));
    assert_eq!(
        std::fs::metadata(dir.path().join("f.log")).unwrap().len(),
        len
    );
}

/// An open the test lets through: each open says which index it started, then waits for a
/// go (`Ok`: the real open; `Err`: that failure).
fn gated_open() -> (OpenFn, Receiver<String>, mpsc::Sender<io::Result<()>>) {
    let (entered_tx, entered) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<io::Result<()>>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let entered_tx = std::sync::Mutex::new(entered_tx);
    let open: OpenFn = Arc::new(move |base: &str, name: &str| {
        entered_tx.lock().unwrap().send(name.to_string()).unwrap();
        go_rx.lock().unwrap().recv().unwrap()?;
        open::load(base, name)
    });
    (open, entered, go)
}

fn sync_data() -> SyncFn {
    Arc::new(|f: &File| f.sync_data())
}

/// Feeds notices until every tag in `tags` is released: the answers in release order.
fn released(svc: &mut Svc, tags: &[u64]) -> Vec<(u64, Answer)> {
    let mut out = Vec::new();
    while out.len() < tags.len() {
        for r in svc.next() {
            assert!(tags.contains(&r.tag), "unexpected tag {}", r.tag);
            out.push((r.tag, r.answer));
        }
    }
    out
}

fn get(index: &str, id: &str) -> Request {
    req(index, TierSel::Default, Command::Get(vec![id.into()]))
}

fn total(index: &str) -> Request {
    req(index, TierSel::Default, Command::Total)
}

#[test]
fn requests_wait_for_the_open_and_run_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let (open, entered, go) = gated_open();
    let mut svc = start_with(cfg(&dir), sync_data(), open);
    let cb = || Some("cb".to_string());
    let s = &mut svc.svc;
    // The first request for `a` starts its open; everything for `a` waits behind it.
    assert_eq!(s.execute(set("a", "x", 1), cb(), 1), Outcome::Held);
    assert_eq!(entered.recv().unwrap(), "a");
    assert_eq!(s.execute(set("a", "x", 2), cb(), 2), Outcome::Held);
    assert_eq!(s.execute(get("a", "x"), cb(), 3), Outcome::Held);
    // A batch naming `a` and `c` (not open either) waits for both; a later read of `a`
    // waits behind the batch, so `a`'s requests stay in arrival order.
    let batch = vec![
        ("#1.total?a".to_string(), total("a")),
        ("#2.set?c".to_string(), set("c", "y", 5)),
    ];
    assert_eq!(s.execute_batch(batch, cb(), 4), Outcome::Held);
    assert_eq!(s.execute(total("a"), cb(), 5), Outcome::Held);
    // An invalid name waits for nothing.
    let bad = s.execute(total("../x"), cb(), 6);
    assert!(
        matches!(&bad, Outcome::Now(r) if r.answer == Answer::One(Reply::Null)),
        "{bad:?}"
    );
    assert_eq!(s.waiting_open(), 5);
    assert_eq!(
        s.waiting(),
        0,
        "nothing ran yet, so nothing waits for a sync"
    );

    // `a` opens: its first three requests run; the batch still waits for `c`, and the read
    // behind it too.
    go.send(Ok(())).unwrap();
    assert_eq!(entered.recv().unwrap(), "c");
    let first = released(&mut svc, &[1, 2, 3]);
    assert_eq!(
        first.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        first[0].1,
        Answer::One(Reply::Set(vec![("x".into(), SetResult::Rank(1))]))
    );
    let Answer::One(Reply::Get(g)) = &first[2].1 else {
        panic!("{:?}", first[2])
    };
    // The get ran after both sets: it sees the second score.
    let GetResult::Tier { scores, .. } = &g[0].1 else {
        panic!("{g:?}")
    };
    assert_eq!(scores, &vec![(Score::Int(2), 1)]);
    assert_eq!(svc.svc.waiting_open(), 2);

    go.send(Ok(())).unwrap();
    let rest = released(&mut svc, &[4, 5]);
    assert_eq!(rest.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(
        rest[0].1,
        Answer::Batch(vec![
            ("#1.total?a".into(), Reply::Total(1)),
            (
                "#2.set?c".into(),
                Reply::Set(vec![("y".into(), SetResult::Rank(1))])
            ),
        ])
    );
    assert_eq!(rest[1].1, Answer::One(Reply::Total(1)));
    assert_eq!(svc.svc.waiting_open(), 0);
    // Open now, and nothing held: answered at once, without another open.
    let Outcome::Now(r) = svc.svc.execute(total("c"), cb(), 7) else {
        panic!("an open index with nothing waiting answers now")
    };
    assert_eq!(r.answer, Answer::One(Reply::Total(1)));
    assert!(entered.try_recv().is_err(), "opened once");
}

#[test]
fn a_failed_open_answers_everyone_waiting_null_and_the_next_request_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (open, entered, go) = gated_open();
    let mut svc = start_with(cfg(&dir), sync_data(), open);
    go.send(Ok(())).unwrap();
    svc.open(&["ok"]);
    assert_eq!(entered.recv().unwrap(), "ok");
    let cb = || Some("cb".to_string());
    let s = &mut svc.svc;
    assert_eq!(s.execute(set("f", "x", 1), cb(), 1), Outcome::Held);
    assert_eq!(entered.recv().unwrap(), "f");
    assert_eq!(s.execute(get("f", "x"), cb(), 2), Outcome::Held);
    let batch = vec![
        ("#1.total?f".to_string(), total("f")),
        ("#2.set?ok".to_string(), set("ok", "y", 3)),
    ];
    assert_eq!(s.execute_batch(batch, cb(), 3), Outcome::Held);
    go.send(Err(io::Error::other("unreadable disk"))).unwrap();
    let out = released(&mut svc, &[1, 2, 3]);
    assert_eq!(
        out.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(out[0].1, Answer::One(Reply::Null));
    assert_eq!(out[1].1, Answer::One(Reply::Null));
    // The batch's other index is unaffected.
    assert_eq!(
        out[2].1,
        Answer::Batch(vec![
            ("#1.total?f".into(), Reply::Null),
            (
                "#2.set?ok".into(),
                Reply::Set(vec![("y".into(), SetResult::Rank(1))])
            ),
        ])
    );
    assert_eq!(svc.svc.waiting_open(), 0);
    // The next request opens again, and this time it works.
    assert_eq!(svc.svc.execute(set("f", "x", 4), cb(), 4), Outcome::Held);
    assert_eq!(entered.recv().unwrap(), "f");
    go.send(Ok(())).unwrap();
    let out = released(&mut svc, &[4]);
    assert_eq!(
        out[0].1,
        Answer::One(Reply::Set(vec![("x".into(), SetResult::Rank(1))]))
    );
}

#[test]
fn a_corrupt_snapshot_is_refused_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.snap"), b"not a snapshot at all").unwrap();
    let mut svc = Svc::new(cfg(&dir));
    assert_eq!(svc.execute(total("bad")), Reply::Null);
    assert_eq!(svc.execute(set("bad", "x", 1)), Reply::Null);
    // Never silently dropped: the file is still there, and each request tried again.
    assert!(dir.path().join("bad.snap").exists());
    std::fs::remove_file(dir.path().join("bad.snap")).unwrap();
    assert_eq!(
        svc.execute(set("bad", "x", 1)),
        Reply::Set(vec![("x".into(), SetResult::Rank(1))])
    );
    assert_eq!(svc.execute(total("bad")), Reply::Total(1));
}

/// The open thread answers the shard that asked, through its channel, and rings its core.
#[test]
fn the_open_thread_answers_through_the_shards_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (ring_tx, rung) = mpsc::channel();
    let t = OpenThread::start(
        "test",
        Box::new(move |core| {
            let _ = ring_tx.send(core);
        }),
    )
    .unwrap();
    let (reply, results) = mpsc::channel();
    let base = format!("{}/n", dir.path().display());
    t.send(OpenJob {
        core: 3,
        name: "n".into(),
        base,
        reply,
    })
    .map_err(|_| ())
    .unwrap();
    assert_eq!(rung.recv_timeout(Duration::from_secs(30)).unwrap(), 3);
    let r = results.try_recv().unwrap();
    assert_eq!(r.name, "n");
    assert_eq!(r.result.map(|l| l.ranking.ids()).unwrap(), 0);
}
