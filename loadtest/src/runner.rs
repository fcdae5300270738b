//! Runs a plan: worker threads each drive their share of the bots on a single-threaded tokio
//! runtime (a `LocalSet`, so Lua states that are not `Send` can live there), while the
//! calling thread ticks the per-second series, enforces the duration and handles Ctrl-C.
//! Bots are spread round-robin over the workers and started on the ramp-up schedule.

use crate::builtin;
use crate::cli::{Plan, Scenario, StopRule};
use crate::conn::{self, BotCtx};
use crate::lobby;
use crate::lotus;
use crate::luabot::{self, Script};
use crate::report::RunTotals;
use crate::series::{Collector, Point};
use crate::stats::{Recorder, Shared};
use anyhow::{anyhow, Context};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// When bot `index` (0-based) connects, relative to the start.
pub fn ramp_delay(index: usize, ramp_up: Option<f64>) -> Duration {
    match ramp_up {
        Some(rate) if rate > 0.0 => Duration::from_secs_f64(index as f64 / rate),
        _ => Duration::ZERO,
    }
}

/// Runs the plan to the end. `on_point` sees each per-second point as it is made (the
/// progress line). Errors are setup failures (threads, runtimes, the script); everything the
/// server does is measured instead.
pub fn run(plan: &Plan, mut on_point: impl FnMut(&Point)) -> anyhow::Result<RunTotals> {
    let source = match &plan.scenario {
        Scenario::Lua(path) => Some(Arc::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )),
        _ => None,
    };
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let shared = Shared::new(plan.threads, measure_from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let plan_arc = Arc::new(plan.clone());
    let setup = Arc::new(lotus::Setup::default());

    let mut handles = Vec::with_capacity(plan.threads);
    for w in 0..plan.threads {
        let (plan, shared, stop, done, source, setup) = (
            plan_arc.clone(),
            shared.clone(),
            stop_rx.clone(),
            done_tx.clone(),
            source.clone(),
            setup.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("bots-{w}"))
            .spawn(move || {
                let result = worker(w, plan, shared, stop, start, source, setup);
                let _ = done.send(result);
            })
            .context("starting a worker thread")?;
        handles.push(handle);
    }
    drop(done_tx);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the reporter runtime")?;
    let mut collector = Collector::new(shared.clone(), start);
    let mut failures = Vec::new();
    let (end, interrupted) = rt.block_on(async {
        let second = Duration::from_secs(1);
        let mut next_tick = start + second;
        let deadline = match plan.stop {
            StopRule::Duration(d) => Some(measure_from + d),
            StopRule::Messages(_) => None,
        };
        let mut stopped_at: Option<Instant> = None;
        let mut interrupted = false;
        let mut done = 0;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut ctrl_c_armed = true;
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next_tick.into()) => {
                    on_point(collector.tick(next_tick));
                    next_tick += second;
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or(next_tick).into()),
                    if deadline.is_some() && stopped_at.is_none() => {
                    let _ = stop_tx.send(true);
                    stopped_at = Some(Instant::now());
                }
                r = &mut ctrl_c, if ctrl_c_armed => {
                    ctrl_c_armed = false;
                    if r.is_ok() {
                        if interrupted {
                            // Second Ctrl-C: something does not stop (a script in a loop?).
                            std::process::exit(130);
                        }
                        interrupted = true;
                        eprintln!("stage-loadtest: interrupted, stopping the bots (Ctrl-C again to quit now)");
                        if stopped_at.is_none() {
                            let _ = stop_tx.send(true);
                            stopped_at = Some(Instant::now());
                        }
                        ctrl_c.set(tokio::signal::ctrl_c());
                        ctrl_c_armed = true;
                    }
                }
                msg = done_rx.recv() => match msg {
                    Some(r) => {
                        if let Err(e) = r {
                            failures.push(e);
                        }
                        done += 1;
                        if done == plan.threads {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        (stopped_at.unwrap_or_else(Instant::now), interrupted)
    });
    for h in handles {
        if h.join().is_err() {
            failures.push("a worker thread panicked".into());
        }
    }
    if !failures.is_empty() {
        return Err(anyhow!("{}", failures.join("; ")));
    }
    // The last, partial span: kept if long enough to say something.
    let now = Instant::now();
    if now.saturating_duration_since(collector.last_tick()) >= Duration::from_millis(200) {
        on_point(collector.tick(now));
    }
    let (totals, samples) = shared.totals();
    Ok(RunTotals {
        elapsed: end.saturating_duration_since(start),
        measured: end.saturating_duration_since(measure_from),
        interrupted,
        totals,
        samples,
        ever_connected: shared.ever_connected.load(Ordering::Relaxed),
        series: collector.points,
        deliveries: shared.deliveries.load(Ordering::Relaxed),
        missed: shared.missed.load(Ordering::Relaxed),
    })
}

/// One worker thread: its own runtime, its own Lua state, bots `w, w+threads, ...`.
fn worker(
    w: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    start: Instant,
    source: Option<Arc<Vec<u8>>>,
    setup: Arc<lotus::Setup>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("worker {w}: runtime: {e}"))?;
    let script = match (&plan.scenario, source) {
        (Scenario::Lua(path), Some(src)) => Some(Rc::new(
            Script::load(&src, &path.display().to_string()).map_err(|e| format!("{e:#}"))?,
        )),
        _ => None,
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for index in (w..plan.connections).step_by(plan.threads) {
            let at = start + ramp_delay(index, plan.ramp_up);
            tasks.push(tokio::task::spawn_local(bot(
                plan.clone(),
                Recorder::new(shared.clone(), w),
                stop.clone(),
                index + 1,
                at,
                script.clone(),
                setup.clone(),
            )));
        }
        for t in tasks {
            // A bot task cannot panic on server input; if one did anyway, the others go on.
            let _ = t.await;
        }
    });
    Ok(())
}

/// One bot: wait for its ramp-up slot, connect, run the scenario, account for the close.
async fn bot(
    plan: Arc<Plan>,
    rec: Recorder,
    mut stop: watch::Receiver<bool>,
    id: usize,
    at: Instant,
    script: Option<Rc<Script>>,
    setup: Arc<lotus::Setup>,
) {
    if plan.scenario == Scenario::Lotus {
        // lotus-client connects (and logs in) itself, and accounts for it in `lotus::run`.
        tokio::select! {
            biased;
            _ = conn::stopped(&mut stop) => return,
            _ = tokio::time::sleep_until(at.into()) => {}
        }
        let ctx = BotCtx {
            plan: &plan,
            rec,
            stop,
            id,
        };
        return lotus::run(ctx, &setup).await;
    }
    let stream = tokio::select! {
        biased;
        _ = conn::stopped(&mut stop) => return,
        s = async {
            tokio::time::sleep_until(at.into()).await;
            conn::connect(plan.addr, plan.timeout, &rec, id).await
        } => s,
    };
    let Some(stream) = stream else { return };
    rec.connected();
    let ctx = BotCtx {
        plan: &plan,
        rec: rec.clone(),
        stop,
        id,
    };
    match script {
        Some(script) => luabot::run(script, ctx, stream).await,
        None if plan.scenario == Scenario::Lobby => lobby::run(ctx, stream).await,
        None => builtin::run(ctx, stream).await,
    }
    rec.closed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_schedule() {
        assert_eq!(ramp_delay(10, None), Duration::ZERO);
        assert_eq!(ramp_delay(0, Some(4.0)), Duration::ZERO);
        assert_eq!(ramp_delay(10, Some(4.0)), Duration::from_millis(2500));
    }
}
