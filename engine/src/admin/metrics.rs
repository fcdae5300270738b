//! `/metrics`: a [`Scrape`] written as Prometheus text. Every metric name, its labels and
//! its meaning are listed in docs/metrics.md; keep the two in step.

use super::gather::Scrape;
use super::prom::{Exposition, Kind};
use crate::net::stats::IoFigures;
use crate::node::stats::{ServiceFigures, CALLBACK_BUCKETS};

/// The label of outgoing (`broker.join`) connections in the per-listener families.
pub const JOINED: &str = "join";

pub fn render(scrape: &Scrape, process: u32) -> String {
    let mut e = Exposition::default();
    let process = process.to_string();
    let p = [("process", process.as_str())];

    e.family(
        "stage_up_seconds",
        Kind::Gauge,
        "Seconds since this process started.",
    );
    e.sample("stage_up_seconds", &p, scrape.uptime.as_secs_f64());
    e.family("stage_core_up", Kind::Gauge, "1 when the core answered this scrape in time, 0 when it did not (its other figures are missing from this scrape).");
    for (i, core) in scrape.cores.iter().enumerate() {
        let c = i.to_string();
        e.sample("stage_core_up", &[("core", &c)], u64::from(core.is_some()));
    }
    e.family(
        "stage_inbox_depth",
        Kind::Gauge,
        "Messages waiting in the core's inbox.",
    );
    for (i, depth) in scrape.inbox.iter().enumerate() {
        e.sample("stage_inbox_depth", &[("core", &i.to_string())], *depth);
    }

    // Per core and listener.
    let io: Vec<(String, String, IoFigures)> = scrape
        .cores
        .iter()
        .flatten()
        .flat_map(|c| {
            let core = c.core.to_string();
            c.listeners
                .iter()
                .map(move |l| (core.clone(), l.url.clone(), l.io))
                .chain(std::iter::once((
                    c.core.to_string(),
                    JOINED.to_string(),
                    c.joined,
                )))
        })
        .collect();
    type Field = fn(&IoFigures) -> u64;
    let families: [(&str, Kind, &str, Field); 7] = [
        (
            "stage_connections_open",
            Kind::Gauge,
            "Connections open now.",
            IoFigures::open,
        ),
        (
            "stage_connections_accepted_total",
            Kind::Counter,
            "Connections accepted (past maxconn/perip) or joined.",
            |f| f.accepted,
        ),
        (
            "stage_frames_in_total",
            Kind::Counter,
            "Frames received (one message each; a read for raw sockets).",
            |f| f.frames_in,
        ),
        (
            "stage_bytes_in_total",
            Kind::Counter,
            "Bytes read from sockets.",
            |f| f.bytes_in,
        ),
        (
            "stage_frames_out_total",
            Kind::Counter,
            "Messages committed to sockets.",
            |f| f.frames_out,
        ),
        (
            "stage_bytes_out_total",
            Kind::Counter,
            "Bytes written to sockets.",
            |f| f.bytes_out,
        ),
        (
            "stage_output_overflow_closes_total",
            Kind::Counter,
            "Connections closed with ENOBUFS: unsent output passed OUT (a peer that does not read).",
            |f| f.overflow_closes,
        ),
    ];
    for (name, kind, help, field) in families {
        e.family(name, kind, help);
        for (core, listener, f) in &io {
            e.sample(name, &[("core", core), ("listener", listener)], field(f));
        }
    }

    // Per listener (the gate is shared by the process's cores).
    e.family(
        "stage_connections_refused_total",
        Kind::Counter,
        "Connections closed at accept by a listener limit (reason: maxconn, perip).",
    );
    for l in &scrape.listeners {
        e.sample(
            "stage_connections_refused_total",
            &[("listener", &l.label), ("reason", "maxconn")],
            l.gate.refused_maxconn,
        );
        e.sample(
            "stage_connections_refused_total",
            &[("listener", &l.label), ("reason", "perip")],
            l.gate.refused_perip,
        );
    }
    e.family("stage_frame_deadline_closes_total", Kind::Counter, "Connections closed with ETIMEDOUT for not completing a frame within the listener's deadline.");
    for l in &scrape.listeners {
        e.sample(
            "stage_frame_deadline_closes_total",
            &[("listener", &l.label)],
            l.gate.timed_out,
        );
    }
    e.family(
        "stage_accept_errors_total",
        Kind::Counter,
        "Failed accept calls (EMFILE, ENFILE, ...).",
    );
    for l in &scrape.listeners {
        e.sample(
            "stage_accept_errors_total",
            &[("listener", &l.label)],
            l.gate.accept_errors,
        );
    }

    // Per core: Lua.
    e.family(
        "stage_lua_memory_bytes",
        Kind::Gauge,
        "Memory held by the core's Lua state.",
    );
    for c in scrape.cores.iter().flatten() {
        e.sample(
            "stage_lua_memory_bytes",
            &[("core", &c.core.to_string())],
            c.host.lua_memory,
        );
    }
    e.family(
        "stage_lua_errors_total",
        Kind::Counter,
        "Script errors caught and logged on the core.",
    );
    for c in scrape.cores.iter().flatten() {
        e.sample(
            "stage_lua_errors_total",
            &[("core", &c.core.to_string())],
            c.host.lua_errors,
        );
    }
    e.family("stage_callback_duration_seconds", Kind::Histogram, "Time spent in one call into Lua, by kind (accept, receive, close, connect, datagram, message, idle).");
    for c in scrape.cores.iter().flatten() {
        let core = c.core.to_string();
        for (kind, h) in &c.callbacks {
            e.histogram(
                "stage_callback_duration_seconds",
                &[("core", &core), ("kind", kind)],
                &CALLBACK_BUCKETS,
                &h.counts,
                h.sum_seconds,
            );
        }
    }
    for (name, help, routed) in [
        (
            "stage_messages_routed_total",
            "Stage messages handed to a receiver, by policy (one, all, node, remote).",
            true,
        ),
        (
            "stage_messages_unrouted_total",
            "Stage messages that found no receiver, by policy.",
            false,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for c in scrape.cores.iter().flatten() {
            let core = c.core.to_string();
            let counts = if routed {
                &c.host.routed
            } else {
                &c.host.unrouted
            };
            for (policy, n) in counts {
                e.sample(name, &[("core", &core), ("policy", policy)], *n);
            }
        }
    }

    // Process-wide limit hits and drops.
    e.family(
        "stage_unrouted_total",
        Kind::Counter,
        "Messages of any kind (stage messages, replies, service outputs) that found no receiver.",
    );
    e.sample("stage_unrouted_total", &p, scrape.unrouted);
    e.family("stage_limit_hits_total", Kind::Counter, "Limits of docs/limits.md that were hit (limit: cpu_budget, bson_depth, bson_elements, inbox_full, post_retried, commit_refused, blocking_on_core).");
    for (limit, n) in [
        ("cpu_budget", scrape.budget_exceeded),
        ("bson_depth", scrape.bson_limits.0),
        ("bson_elements", scrape.bson_limits.1),
        ("inbox_full", scrape.inbox_dropped),
        ("post_retried", scrape.post_retried),
        ("commit_refused", scrape.commits_refused),
        ("blocking_on_core", scrape.blocking_on_core),
    ] {
        e.sample("stage_limit_hits_total", &[("limit", limit)], n);
    }

    services(&mut e, scrape);
    e.family(
        "stage_odbc_queries_total",
        Kind::Counter,
        "ODBC statements executed (result: ok, error).",
    );
    e.sample(
        "stage_odbc_queries_total",
        &[("result", "ok")],
        scrape.odbc[0],
    );
    e.sample(
        "stage_odbc_queries_total",
        &[("result", "error")],
        scrape.odbc[1],
    );
    e.finish()
}

fn services(e: &mut Exposition, scrape: &Scrape) {
    type Field = fn(&ServiceFigures) -> u64;
    let families: [(&str, Kind, &str, Field); 10] = [
        (
            "stage_index_operations_total",
            Kind::Counter,
            "index.so commands run by the core's shards.",
            |s| s.index_ops,
        ),
        (
            "stage_ticket_grants_total",
            Kind::Counter,
            "=ticket grants sent.",
            |s| s.ticket_grants,
        ),
        (
            "stage_ticket_expiries_total",
            Kind::Counter,
            "=ticket leases expired and queued requests cancelled.",
            |s| s.ticket_expiries,
        ),
        (
            "stage_ticket_refusals_total",
            Kind::Counter,
            "=ticket requests refused (unknown category, category or queue full).",
            |s| s.ticket_refusals,
        ),
        (
            "stage_ticket_waiting",
            Kind::Gauge,
            "=ticket requests queued on the core's shards now.",
            |s| s.ticket_waiting,
        ),
        (
            "stage_ticket_held",
            Kind::Gauge,
            "=ticket leases held on the core's shards now.",
            |s| s.ticket_held,
        ),
        (
            "stage_route_offers_total",
            Kind::Counter,
            "=route willingness queries sent to subscribers.",
            |s| s.route_offers,
        ),
        (
            "stage_route_claims_total",
            Kind::Counter,
            "=route claims received.",
            |s| s.route_claims,
        ),
        (
            "stage_route_failures_total",
            Kind::Counter,
            "=route messages nobody took (sent to the fail callback).",
            |s| s.route_failures,
        ),
        (
            "stage_route_pending",
            Kind::Gauge,
            "=route messages waiting for a claim now.",
            |s| s.route_pending,
        ),
    ];
    for (name, kind, help, field) in families {
        e.family(name, kind, help);
        for c in scrape.cores.iter().flatten() {
            e.sample(name, &[("core", &c.core.to_string())], field(&c.services));
        }
    }
    e.family(
        "stage_http_requests_total",
        Kind::Counter,
        "curl.so requests answered, by result (ok, or curl_<code>: 7 refused, 28 timeout, ...).",
    );
    for c in scrape.cores.iter().flatten() {
        let core = c.core.to_string();
        for (result, n) in &c.services.http {
            e.sample(
                "stage_http_requests_total",
                &[("core", &core), ("result", result)],
                *n,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::admission::Counters;
    use crate::node::stats::{CoreSnapshot, HistogramFigures, ListenerFigures};

    #[test]
    fn a_scrape_becomes_labelled_families_and_a_silent_core_shows_as_down() {
        let io = IoFigures {
            accepted: 3,
            closed: 1,
            frames_in: 7,
            bytes_in: 100,
            frames_out: 6,
            bytes_out: 90,
            overflow_closes: 0,
        };
        let mut counts = vec![0; CALLBACK_BUCKETS.len() + 1];
        counts[0] = 4;
        let core = CoreSnapshot {
            core: 0,
            listeners: vec![ListenerFigures {
                id: 9,
                url: "tcp://127.0.0.1:8081".into(),
                io,
            }],
            callbacks: vec![(
                "receive",
                HistogramFigures {
                    counts,
                    sum_seconds: 0.00002,
                },
            )],
            ..CoreSnapshot::default()
        };
        let scrape = Scrape {
            cores: vec![Some(core), None],
            inbox: vec![0, 17],
            listeners: vec![super::super::gather::ListenerInfo {
                id: 9,
                label: "tcp://127.0.0.1:8081".into(),
                stage: None,
                gate: Counters {
                    refused_maxconn: 5,
                    ..Counters::default()
                },
            }],
            budget_exceeded: 2,
            bson_limits: (1, 0),
            unrouted: 0,
            inbox_dropped: 0,
            post_retried: 0,
            blocking_on_core: 0,
            commits_refused: 0,
            odbc: [0, 0],
            uptime: std::time::Duration::from_secs(1),
        };
        let text = render(&scrape, 1);
        for line in [
            "stage_core_up{core=\"0\"} 1",
            "stage_core_up{core=\"1\"} 0",
            "stage_inbox_depth{core=\"1\"} 17",
            "stage_connections_open{core=\"0\",listener=\"tcp://127.0.0.1:8081\"} 2",
            "stage_connections_accepted_total{core=\"0\",listener=\"tcp://127.0.0.1:8081\"} 3",
            "stage_bytes_out_total{core=\"0\",listener=\"tcp://127.0.0.1:8081\"} 90",
            "stage_connections_refused_total{listener=\"tcp://127.0.0.1:8081\",reason=\"maxconn\"} 5",
            "stage_callback_duration_seconds_bucket{core=\"0\",kind=\"receive\",le=\"0.00001\"} 4",
            "stage_callback_duration_seconds_count{core=\"0\",kind=\"receive\"} 4",
            "stage_limit_hits_total{limit=\"cpu_budget\"} 2",
            "stage_limit_hits_total{limit=\"bson_depth\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        // Nothing of the silent core but its up and inbox gauges.
        let core1: Vec<&str> = text.lines().filter(|l| l.contains("core=\"1\"")).collect();
        assert_eq!(core1.len(), 2, "{core1:?}");
        // Every family is declared once, before its samples.
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
    }
}
