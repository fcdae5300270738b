//! Wake-up latency of a cross-core hop and what `%spin` costs in idle CPU (issue #15 item 3).
//!
//! Two pinned glommio executors (CPUs 0 and 1, as the engine's cores) bounce a message through
//! their inboxes (`node::mailbox`, the engine's own doorbell queue, run as a core runs it with
//! `%spin`: `Inbox::run_spinning`): core A sends to B, B
//! answers, A records the round trip and, after a pause, sends the next. Each configuration
//! runs in this one command, so the figures compare like with like on a noisy machine:
//!
//! - `spin` 0 (park at once, the default) against the given spins, for a pause of 0 (the
//!   next message leaves as soon as the answer is in: the receiving core was busy a moment
//!   ago) and for longer pauses (a core that has been idle that long);
//! - the CPU time both cores used per round trip (`getrusage` of each executor thread), which
//!   is what the spin costs while the cores wait, and how long A's pause timer really took.
//!
//! Usage: `target/release/wakeup [ROUND_TRIPS] [SPIN_US,...] [PAUSE_US,...]`
//! (defaults 3000, `50,200`, `0,100,1000`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use stage_engine::node::mailbox;

/// What one configuration measured.
struct Run {
    /// One-hop latency (half a round trip), sorted, µs.
    hops: Vec<f64>,
    /// CPU time of both cores per round trip, µs.
    cpu_per_rt: f64,
    /// How long A's `pause` timer really took, sorted, µs (a spinning core runs its timers
    /// late if the spin holds the executor).
    pauses: Vec<f64>,
}

fn thread_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own; RUSAGE_THREAD is this thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn builder(cpu: usize) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("wakeup-{cpu}"))
}

fn run(round_trips: usize, spin: Duration, pause: Duration) -> Run {
    let (to_a, inbox_a) = mailbox::channel::<Option<Instant>>(1024).unwrap();
    let (to_b, inbox_b) = mailbox::channel::<Option<Instant>>(1024).unwrap();
    let (cpu_tx, cpu_rx) = mpsc::channel::<Duration>();
    let (done_tx, done_rx) = mpsc::channel::<(Vec<f64>, Vec<f64>)>();

    // B: answers every message with the timestamp it carried; `None` ends it (an inbox's
    // `run` lasts as long as the inbox, which holds its own doorbell).
    let to_a_from_b = to_a.clone();
    let cpu_b = cpu_tx.clone();
    let b = builder(1)
        .spawn(move || async move {
            let start = thread_cpu();
            let (stop_tx, stop_rx) = glommio::channels::local_channel::new_unbounded::<()>();
            glommio::spawn_local(inbox_b.run_spinning(
                spin,
                move |sent: Option<Instant>| match sent {
                    Some(_) => {
                        let _ = to_a_from_b.send(sent, 1024);
                    }
                    None => {
                        let _ = stop_tx.try_send(());
                    }
                },
            ))
            .detach();
            stop_rx.recv().await;
            let _ = cpu_b.send(thread_cpu() - start);
        })
        .unwrap();

    // A: records each round trip, pauses, sends the next; stops both after `round_trips`.
    let to_b_from_a = to_b.clone();
    let a = builder(0)
        .spawn(move || async move {
            let start = thread_cpu();
            let rtts = Rc::new(RefCell::new(Vec::with_capacity(round_trips)));
            let (next_tx, next_rx) = glommio::channels::local_channel::new_unbounded::<()>();
            let recorder = rtts.clone();
            // Ends with this executor, when the last answer is in.
            glommio::spawn_local(inbox_a.run_spinning(spin, move |sent: Option<Instant>| {
                let sent = sent.expect("B answers with a timestamp");
                recorder
                    .borrow_mut()
                    .push(sent.elapsed().as_secs_f64() * 1e6);
                let _ = next_tx.try_send(());
            }))
            .detach();
            to_b_from_a.send(Some(Instant::now()), 1024).unwrap();
            let mut pauses = Vec::new();
            for _ in 1..round_trips {
                next_rx.recv().await;
                if !pause.is_zero() {
                    let slept = Instant::now();
                    glommio::timer::sleep(pause).await;
                    pauses.push(slept.elapsed().as_secs_f64() * 1e6);
                }
                to_b_from_a.send(Some(Instant::now()), 1024).unwrap();
            }
            next_rx.recv().await;
            to_b_from_a.send(None, 1024).unwrap();
            let _ = cpu_tx.send(thread_cpu() - start);
            let _ = done_tx.send((rtts.borrow().clone(), pauses));
        })
        .unwrap();

    let (rtts, mut pauses) = done_rx.recv().unwrap();
    let cpu_a = cpu_rx.recv().unwrap();
    a.join().unwrap();
    b.join().unwrap();
    let cpu_b = cpu_rx.recv().unwrap();
    let mut hops: Vec<f64> = rtts.iter().map(|rtt| rtt / 2.0).collect();
    hops.sort_by(|x, y| x.total_cmp(y));
    pauses.sort_by(|x, y| x.total_cmp(y));
    Run {
        hops,
        cpu_per_rt: (cpu_a + cpu_b).as_secs_f64() * 1e6 / round_trips as f64,
        pauses,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn list(arg: Option<String>, default: &[u64]) -> Vec<u64> {
    match arg {
        Some(a) => a.split(',').map(|x| x.parse().expect("a number")).collect(),
        None => default.to_vec(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let round_trips: usize = args
        .next()
        .map_or(3000, |a| a.parse().expect("round trips"));
    let spins = list(args.next(), &[50, 200]);
    let pauses = list(args.next(), &[0, 100, 1000]);
    println!(
        "one hop = half a round trip between two pinned cores; {round_trips} round trips per row"
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>12} {:>13} {:>13}",
        "pause",
        "spin µs",
        "p50 µs",
        "p99 µs",
        "vs spin 0",
        "CPU µs/rt",
        "CPU vs spin 0",
        "pause p50 µs"
    );
    for &pause in &pauses {
        let pause_d = Duration::from_micros(pause);
        let base = run(round_trips, Duration::ZERO, pause_d);
        let base_p50 = pct(&base.hops, 0.5);
        let row = |spin: u64, r: &Run| {
            let slept = if r.pauses.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", pct(&r.pauses, 0.5))
            };
            println!(
                "{:>6}µs {:>9} {:>9.1} {:>9.1} {:>8.2}× {:>12.1} {:>12.2}× {:>13}",
                pause,
                spin,
                pct(&r.hops, 0.5),
                pct(&r.hops, 0.99),
                pct(&r.hops, 0.5) / base_p50,
                r.cpu_per_rt,
                r.cpu_per_rt / base.cpu_per_rt,
                slept
            )
        };
        row(0, &base);
        for &spin in &spins {
            let r = run(round_trips, Duration::from_micros(spin), pause_d);
            row(spin, &r);
        }
    }
}
