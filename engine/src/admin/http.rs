//! The admin endpoint's HTTP/1.1 server (hyper) on the admin thread's runtime: one task per
//! client connection, four routes. Every answer is built from what the cores report through
//! their inboxes (`gather`); nothing here touches a core's state.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::{auth, gather, metrics, status, Settings, PAGE};
use crate::node::Node;

/// Serves `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, node: Arc<Node>, settings: Arc<Settings>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors and the like: the game goes on; try again shortly.
                tracing::warn!("admin: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (node, settings) = (node.clone(), settings.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (node, settings) = (node.clone(), settings.clone());
                async move { Ok::<_, Infallible>(route(&node, &settings, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("admin: connection ended: {err}");
            }
        });
    }
}

async fn route(
    node: &Arc<Node>,
    settings: &Settings,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    // The page holds no figures: it asks for them with the token the operator gives it.
    if path == "/" || path == "/index.html" {
        return match *req.method() {
            Method::GET | Method::HEAD => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            _ => not_allowed("GET"),
        };
    }
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if !auth::authorized(settings.token.as_deref(), header) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "this admin endpoint needs `Authorization: Bearer <token>` (the token of #admin)\n",
        );
        r.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return r;
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            let scrape = gather::scrape(node).await;
            let text = metrics::render(&scrape, node.process);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        (&Method::GET, "/status") => {
            let scrape = gather::scrape(node).await;
            json(StatusCode::OK, &status::status(node, settings, &scrape))
        }
        (&Method::POST, "/reload") => {
            tracing::info!("admin: reload requested");
            let outcome = gather::reload(node).await;
            json(StatusCode::OK, &status::reload(&outcome))
        }
        (_, "/metrics" | "/status") => not_allowed("GET"),
        (_, "/reload") => not_allowed("POST"),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the admin endpoint serves /, /metrics, /status and POST /reload\n",
        ),
    }
}

fn reply(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(code: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(v).unwrap_or_default();
    text.push('\n');
    reply(code, "application/json", text)
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = reply(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        format!("method not allowed (use {allow})\n"),
    );
    r.headers_mut()
        .insert("allow", HeaderValue::from_static(allow));
    r
}
