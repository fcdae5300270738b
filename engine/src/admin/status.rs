//! `/status` and the answer of `POST /reload` as JSON: what runs in this process (stages,
//! cores, listeners), how it is doing (connections per core, memory, uptime) and which
//! version of each script every core serves.

use serde_json::{json, Value};

use super::gather::Scrape;
use super::Settings;
use crate::node::reload::Outcome;
use crate::node::Node;

pub fn status(node: &Node, settings: &Settings, scrape: &Scrape) -> Value {
    let cores: Vec<Value> = scrape
        .cores
        .iter()
        .enumerate()
        .map(|(i, answer)| {
            let mut core = json!({
                "core": i,
                "cpu": node.cpus.get(i),
                "answered": answer.is_some(),
                "inbox": scrape.inbox.get(i),
            });
            if let Some(c) = answer {
                let scripts: Vec<Value> = c
                    .host
                    .scripts
                    .iter()
                    .map(|s| {
                        json!({
                            "path": s.path,
                            "mtime": s.mtime_ns / 1_000_000_000,
                            "size": s.size,
                            "hash": format!("{:016x}", s.hash),
                        })
                    })
                    .collect();
                let extra = json!({
                    "connections": c.connections,
                    "lua_memory": c.host.lua_memory,
                    "lua_errors": c.host.lua_errors,
                    "frames_in": c.listeners.iter().map(|l| l.io.frames_in).sum::<u64>() + c.joined.frames_in,
                    "frames_out": c.listeners.iter().map(|l| l.io.frames_out).sum::<u64>() + c.joined.frames_out,
                    "scripts": scripts,
                });
                if let (Value::Object(a), Value::Object(b)) = (&mut core, extra) {
                    a.extend(b);
                }
            }
            core
        })
        .collect();
    let stages: Vec<Value> = node
        .stages
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "entry": s.entry,
                "kind": format!("{:?}", s.kind).to_lowercase(),
                "main_core": s.main_core,
            })
        })
        .collect();
    let listeners: Vec<Value> = scrape
        .listeners
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "address": l.label,
                "stage": l.stage.and_then(|i| node.stages.get(i)).map(|s| s.id.clone()),
                "open": l.gate.open,
            })
        })
        .collect();
    let lua: u64 = scrape
        .cores
        .iter()
        .flatten()
        .map(|c| c.host.lua_memory)
        .sum();
    let connections: usize = scrape.cores.iter().flatten().map(|c| c.connections).sum();
    json!({
        "node": settings.node,
        "version": env!("CARGO_PKG_VERSION"),
        "process": node.process,
        "pid": std::process::id(),
        "uptime_seconds": scrape.uptime.as_secs_f64(),
        "processes": processes(node, settings),
        "cores": cores,
        "connections": connections,
        "stages": stages,
        "listeners": listeners,
        "memory": { "rss_bytes": rss_bytes(), "lua_bytes": lua },
    })
}

/// The processes of the node as this one knows them: itself, and in a multi-process node
/// the others with their admin addresses (each child is scraped on its own port).
fn processes(node: &Node, settings: &Settings) -> Vec<Value> {
    let Some(peers) = &node.peers else {
        return vec![
            json!({"process": node.process, "pid": std::process::id(), "admin": settings.listen.to_string()}),
        ];
    };
    peers
        .processes()
        .iter()
        .map(|&n| {
            let mut p = json!({
                "process": n,
                "admin": super::child_address(settings.base, n).map(|a| a.to_string()),
            });
            if n == node.process {
                p["pid"] = json!(std::process::id());
            }
            p
        })
        .collect()
}

/// The reply of `POST /reload`: what the reloader did (`node::reload::Outcome`).
pub fn reload(outcome: &Option<Outcome>) -> Value {
    match outcome {
        Some(o) => json!({
            "outcome": o.status,
            "version": o.version,
            "changed": o.changed,
            "errors": o.errors.iter().map(|(path, error)| json!({"path": path, "error": error})).collect::<Vec<_>>(),
            "cores": o.cores,
            "window_us": o.window.as_micros() as u64,
            "summary": o.summary,
        }),
        None => json!({
            "outcome": "unavailable",
            "summary": "no answer from the reloader (none in this process, or a core did not get back to its inbox in time)",
        }),
    }
}

/// Resident memory of the process (`/proc/self/statm`, pages).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(0) as u64)
}
