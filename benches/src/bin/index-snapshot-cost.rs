//! What a snapshot of a big index costs its owner core, in process (no server): IDS ids with
//! one integer score each (like `index-open-echo`'s index) are set into a `Ranking`, then
//!
//! - the image is encoded in one go (what the core did before snapshots were sliced),
//! - the entries are copied (`Arc` of the id plus a clone of each entry: what handing an
//!   immutable copy to the sync thread would cost the core at the least),
//! - the image is built in slices of `snapshot::SLICE_IDS` ids or `SLICE_BYTES` (the
//!   longest slice is what the core now spends in one turn),
//!
//! and, while filling, the longest single `set` (growing the id map past its capacity
//! rebuilds it in that `set`) against the longest single insert into a std `HashMap` of the
//! same entries (the map the ranking used before).
//!
//! Usage: target/release/index-snapshot-cost [IDS (1000000)] [ROUNDS (3)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stage_engine::service::index::ranking::Ranking;
use stage_engine::service::index::record::Entry;
use stage_engine::service::index::snapshot::{Build, SLICE_BYTES, SLICE_IDS};
use stage_engine::service::index::{Score, SetItem, TierSel};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ids: usize = args.next().map_or(1_000_000, |s| s.parse().expect("IDS"));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("ROUNDS"));
    println!("{ids} ids, one integer score each, no value; {rounds} rounds");
    for round in 1..=rounds {
        let mut r = Ranking::new();
        let mut touched = Vec::new();
        let mut longest_set = Duration::ZERO;
        let started = Instant::now();
        for n in 0..ids {
            let mut item = SetItem {
                id: format!("u{n}"),
                scores: Some(vec![Score::Int(n as i64)]),
                ..SetItem::default()
            };
            let t = Instant::now();
            r.set(&mut item, TierSel::Default, 128, &mut touched);
            longest_set = longest_set.max(t.elapsed());
            touched.clear();
        }
        let fill = started.elapsed();

        // The map the ranking used before: same keys and entries, std's hash map.
        let mut old: HashMap<Arc<str>, Entry, ahash::RandomState> = HashMap::default();
        let mut longest_insert = Duration::ZERO;
        for n in 0..ids {
            let (id, e) = r.at(n).expect("a position below ids()");
            let (id, e) = (id.clone(), e.clone());
            let t = Instant::now();
            old.insert(id, e);
            longest_insert = longest_insert.max(t.elapsed());
        }
        drop(old);

        let t = Instant::now();
        let image = Build::start(&mut r).finish(&mut r);
        let one_go = t.elapsed();
        let bytes = image.len();
        drop(image);

        let t = Instant::now();
        let copy: Vec<(Arc<str>, Entry)> = (0..r.ids())
            .filter_map(|n| r.at(n).map(|(k, e)| (k.clone(), e.clone())))
            .collect();
        let copied = t.elapsed();
        drop(copy);

        let mut build = Build::start(&mut r);
        let mut longest_slice = Duration::ZERO;
        let t = Instant::now();
        loop {
            let s = Instant::now();
            let done = build.step(&mut r, SLICE_IDS, SLICE_BYTES);
            longest_slice = longest_slice.max(s.elapsed());
            if done {
                break;
            }
        }
        let image = build.finish(&mut r);
        let sliced = t.elapsed();
        assert_eq!(image.len(), bytes);

        println!(
            "round {round}: fill {:.0} ms (longest set {:.2} ms; std HashMap longest insert {:.2} ms) | image {:.1} MB: one go {:.1} ms, copy {:.1} ms, {} slices {:.1} ms in all, longest slice {:.3} ms",
            ms(fill),
            ms(longest_set),
            ms(longest_insert),
            bytes as f64 / 1e6,
            ms(one_go),
            ms(copied),
            ids.div_ceil(SLICE_IDS),
            ms(sliced),
            ms(longest_slice),
        );
    }
}
