//! Where the engine's log lines go: standard error, as text (the default) or as one JSON
//! object per line (`--log-format json`, for log shippers), through a non-blocking writer.
//!
//! Cores log from their own threads; a `tracing` event formats the line on the calling thread
//! and hands it to a bounded queue that one writer thread (`tracing-appender`'s worker) drains
//! to stderr. So a stderr that is slow or blocked (a full pipe, a stalled terminal, a log
//! shipper that stopped reading) never stalls a core. When the queue is full (128 000 lines
//! waiting) further lines are dropped rather than wait; the writer reports how many were
//! dropped when it can write again (`tracing-appender`'s lossy mode). The queue is flushed on
//! every orderly exit: [`flush`] before `process::exit`, and the guard's drop at the end of
//! `main`.

use std::sync::Mutex;

use tracing_appender::non_blocking::WorkerGuard;

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-07T01:02:03.456Z  INFO target: message key=value` (coloured on a terminal).
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":…,…},"target":…,"threadName":…}`.
    Json,
}

impl LogFormat {
    /// The command-line spelling (what a supervisor passes on to its children).
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Kept until the process ends: dropping it flushes the queue and stops the writer thread.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Installs the global subscriber: `filter` as in `-l`, lines in `format` to stderr.
pub fn init(filter: &str, format: LogFormat) {
    // The NATS client logs each connection event and, at debug, each message; the cluster
    // logs what matters once (an outage, a reconnect), so the client is kept to warnings
    // unless the filter names it.
    let filter = if filter.contains("async_nats") {
        filter.to_string()
    } else {
        format!("{filter},async_nats=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|err| {
        eprintln!("warning: bad log filter `{filter}` ({err}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let (writer, guard) = with_signals_blocked(|| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .thread_name("stage-log")
            .finish(std::io::stderr())
    });
    *GUARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_thread_names(true)
            .with_current_span(false)
            .init(),
    }
}

/// Runs `f` (which starts the writer thread) with every signal blocked, so the thread
/// inherits a full mask: the process handles SIGINT/SIGTERM by `sigwait` in one thread and
/// SIGCHLD in the supervisor, and a signal delivered to the writer instead would take its
/// default action (for SIGTERM: end the process without a graceful stop).
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use; pthread_sigmask only
    // changes this thread's mask, restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Writes out every queued line (call before `process::exit`, which skips destructors).
pub fn flush() {
    drop(GUARD.lock().unwrap_or_else(|e| e.into_inner()).take());
}
