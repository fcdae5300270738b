//! Runs `curl.so` requests (spec services.md §5.2) on one shared isahc client: validates the
//! request, sends it over HTTP/1.1, follows redirects itself (keeping POST), reads the body
//! under a size cap, and turns every outcome, transport failures included, into an
//! [`HttpReply`].
//!
//! Never blocks the calling core: isahc's futures only wait on channels fed by isahc's own
//! agent thread, which drives libcurl, so they can be polled on a glommio executor (or any
//! other). Building the client starts that thread; dropping the last clone of the client
//! (agents and in-flight responses hold clones) joins it, a short blocking wait, so the
//! owner should keep one clone off the cores and drop it at shutdown.
//!
//! Redirects: isahc's own following (`RedirectPolicy::Follow`) turns POST into GET on 301,
//! 302 and 303, as curl does by default, and has no switch like curl's `CURLOPT_POSTREDIR`
//! to keep it. The spec says a redirect keeps POST, so the client runs with
//! `RedirectPolicy::None` and this module follows 301/302/303/307/308 itself, re-sending the
//! same method, headers and body (curl with `CURL_REDIR_POST_ALL`). On a change of origin
//! the `Authorization`, `Proxy-Authorization` and `Cookie` headers are dropped, as curl does
//! with custom headers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::AsyncReadExt;
use isahc::config::{Configurable, RedirectPolicy, VersionNegotiation};
use isahc::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use isahc::http::{Method, Request, Response};
use isahc::{AsyncBody, HttpClient};
use url::Url;

use super::config::HttpConfig;
use super::reply::{code, parse_content_type, HttpData, HttpReply};
use super::request::{timeouts, HttpRequest, Timeouts};

/// Redirects followed before giving up with `TOO_MANY_REDIRECTS` (browsers stop at 20).
pub const MAX_REDIRECTS: u32 = 20;

/// The shared client could not be built (libcurl or the agent thread failed to start).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the HTTP client: {0}")]
pub struct StartError(String);

/// One `curl.so` instance: its configuration and its one isahc client. Cloning is cheap and
/// shares both, so each core can hold its own handle.
#[derive(Clone)]
pub struct HttpAgent {
    client: HttpClient,
    config: Arc<HttpConfig>,
}

impl std::fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgent")
            .field("config", &self.config)
            .finish()
    }
}

/// A request checked once, before the first hop.
struct Prepared {
    url: Url,
    method: Method,
    headers: HeaderMap,
    body: Option<Bytes>,
}

/// Where an answer leads.
enum Next {
    /// Not a redirect: this answer is the reply.
    Done,
    /// A redirect to follow.
    Follow(Url),
    /// A redirect this client does not follow (not http/https, or an unparsable
    /// `Location`): the answer is the reply, with `redirect_url` set.
    Stop(String),
}

type Failure = (i64, String);

impl HttpAgent {
    /// Builds the shared client and starts isahc's agent thread. Call it at start-up, before
    /// the cores run: the first client in a process initialises libcurl and OpenSSL, and
    /// `curl::init` then sets `SSL_CERT_FILE`/`SSL_CERT_DIR` in the environment (where the
    /// system CA bundle is), which is unsafe while other threads may read the environment.
    pub fn new(config: HttpConfig) -> Result<HttpAgent, StartError> {
        let client = HttpClient::builder()
            .version_negotiation(VersionNegotiation::http11())
            .redirect_policy(RedirectPolicy::None)
            // curl would hold a body back for up to a second waiting for `100 Continue`,
            // which servers that ignore `Expect` never send.
            .expect_continue(false)
            .build()
            .map_err(|e| StartError(e.to_string()))?;
        Ok(HttpAgent {
            client,
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Runs one request; `time_left` is what remains before the message's deadline. The
    /// future owns everything it needs (`'static`), so a core can spawn it and move on.
    pub fn execute(
        &self,
        request: HttpRequest,
        time_left: Option<Duration>,
    ) -> impl Future<Output = HttpReply> + Send + 'static {
        let agent = self.clone();
        async move { agent.run(request, time_left).await }
    }

    async fn run(self, request: HttpRequest, time_left: Option<Duration>) -> HttpReply {
        let started = Instant::now();
        let limits = timeouts(&self.config, request.timeout, time_left);
        if self.config.verbose {
            tracing::info!(url = %request.url, ?limits, "curl: request");
        }
        let mut reply = match prepare(&request, &self.config.user_agent) {
            Ok(prepared) => self.follow(&request.url, prepared, limits, started).await,
            Err((result, message)) => HttpReply::failed(&request.url, None, result, message),
        };
        reply.data.time = started.elapsed().as_secs_f64();
        if self.config.verbose {
            tracing::info!(
                url = %reply.url,
                status = reply.status,
                result = reply.data.result,
                length = reply.data.length,
                time = reply.data.time,
                "curl: reply {}",
                reply.data.message
            );
        }
        reply
    }

    /// Sends the request and each redirect it leads to, until an answer is the reply.
    async fn follow(&self, asked: &str, p: Prepared, limits: Timeouts, t0: Instant) -> HttpReply {
        let deadline = limits.total.map(|t| t0 + t);
        let mut url = p.url.clone();
        let mut headers = p.headers.clone();
        let mut cookies = Vec::new();
        let mut redirects = 0;
        loop {
            let hop_start = Instant::now();
            let sent = self.send(&p, &url, &headers, limits.connect, deadline);
            let mut response = match sent.await {
                Ok(r) => r,
                Err(e) => {
                    let mut reply = HttpReply::failed(
                        asked,
                        Some(url.to_string()),
                        result_of(&e),
                        e.to_string(),
                    );
                    reply.cookie = non_empty(cookies);
                    return reply;
                }
            };
            collect_cookies(response.headers(), &mut cookies);
            let next = next_hop(&url, &response);
            let mut reply = HttpReply {
                url: asked.to_string(),
                redirect_url: None,
                effective_url: Some(url.to_string()),
                status: response.status().as_u16(),
                cookie: None,
                data: HttpData::empty(),
            };
            match next {
                Next::Follow(to) if redirects < MAX_REDIRECTS => {
                    if to.origin() != url.origin() {
                        drop_credentials(&mut headers);
                    }
                    url = to;
                    redirects += 1;
                    continue;
                }
                Next::Follow(to) => {
                    reply.redirect_url = Some(to.to_string());
                    reply.data.result = code::TOO_MANY_REDIRECTS;
                    reply.data.message = format!("more than {MAX_REDIRECTS} redirects");
                }
                Next::Stop(to) => {
                    reply.redirect_url = Some(to);
                    reply.data = self.read_data(&mut response, hop_start).await;
                }
                Next::Done => reply.data = self.read_data(&mut response, hop_start).await,
            }
            reply.cookie = non_empty(cookies);
            return reply;
        }
    }

    /// One hop. The total timeout is what is left of the whole request's, so redirects
    /// cannot stretch it.
    async fn send(
        &self,
        p: &Prepared,
        url: &Url,
        headers: &HeaderMap,
        connect: Duration,
        deadline: Option<Instant>,
    ) -> Result<Response<AsyncBody>, isahc::Error> {
        let mut builder = Request::builder()
            .method(p.method.clone())
            .uri(url.as_str())
            .connect_timeout(connect);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            builder = builder.timeout(left.max(Duration::from_millis(1)));
        }
        if let Some(h) = builder.headers_mut() {
            h.extend(headers.clone());
        }
        let body = p
            .body
            .as_ref()
            .map_or_else(AsyncBody::empty, |b| AsyncBody::from(b.to_vec()));
        let request = builder.body(body)?;
        self.client.send_async(request).await
    }

    /// The body and what describes it; a failure while reading is a result code, not a
    /// lost reply.
    async fn read_data(&self, response: &mut Response<AsyncBody>, hop_start: Instant) -> HttpData {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (mime, params) = parse_content_type(content_type);
        let mut data = HttpData {
            mime,
            params,
            ..HttpData::empty()
        };
        let announced = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match read_capped(response.body_mut(), self.config.max_body, announced).await {
            Ok(content) => {
                data.length = content.len() as u64;
                data.content = content;
            }
            Err((result, message)) => {
                data.result = result;
                data.message = message;
            }
        }
        let secs = hop_start.elapsed().as_secs_f64();
        if secs > 0.0 {
            data.bps = data.length as f64 / secs;
        }
        data
    }
}

/// Checks what can be checked before any network traffic: the URL and its scheme, header
/// names and values; sets the User-Agent and, for a body, POST and the form content type.
fn prepare(request: &HttpRequest, user_agent: &str) -> Result<Prepared, Failure> {
    let url = Url::parse(request.url.trim()).map_err(|e| {
        (
            code::URL_MALFORMAT,
            format!("malformed URL {:?}: {e}", request.url),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err((
            code::UNSUPPORTED_PROTOCOL,
            format!(
                "unsupported protocol {:?} (http and https only)",
                url.scheme()
            ),
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let (n, v) = header_pair(name, value)?;
        headers.append(n, v);
    }
    if !headers.contains_key(header::USER_AGENT) {
        let (n, v) = header_pair("user-agent", user_agent)?;
        headers.insert(n, v);
    }
    let body = request.body.as_ref().map(|b| b.encode());
    let method = if body.is_some() {
        // curl's `CURLOPT_POSTFIELDS` labels any body this way unless told otherwise, and
        // scripts written for it rely on that.
        if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        }
        Method::POST
    } else {
        Method::GET
    };
    Ok(Prepared {
        url,
        method,
        headers,
        body,
    })
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Failure> {
    let bad = |what: &str| {
        (
            code::BAD_FUNCTION_ARGUMENT,
            format!("invalid header {what}: {name:?}: {value:?}"),
        )
    };
    let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("name"))?;
    let v = HeaderValue::from_str(value.trim()).map_err(|_| bad("value"))?;
    Ok((n, v))
}

fn next_hop(url: &Url, response: &Response<AsyncBody>) -> Next {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return Next::Done;
    }
    let Some(location) = response.headers().get(header::LOCATION) else {
        return Next::Done;
    };
    // Some servers send raw UTF-8 here; `Url::join` percent-encodes it.
    let location = String::from_utf8_lossy(location.as_bytes());
    match url.join(location.trim()) {
        Ok(to) if matches!(to.scheme(), "http" | "https") => Next::Follow(to),
        Ok(to) => Next::Stop(to.to_string()),
        Err(_) => Next::Stop(location.into_owned()),
    }
}

fn drop_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::COOKIE);
}

fn collect_cookies(headers: &HeaderMap, out: &mut Vec<String>) {
    for v in headers.get_all(header::SET_COOKIE) {
        out.push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
}

fn non_empty(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

/// Reads at most `cap` bytes; a body announced or found to be bigger is refused with
/// `FILESIZE_EXCEEDED` and its bytes are dropped (closing the transfer), so memory stays
/// bounded whatever the server sends.
async fn read_capped(
    body: &mut AsyncBody,
    cap: usize,
    announced: Option<u64>,
) -> Result<Bytes, Failure> {
    let cap64 = cap as u64;
    let too_big = |what: &str| {
        (
            code::FILESIZE_EXCEEDED,
            format!("response body {what}exceeds the limit of {cap} bytes"),
        )
    };
    if let Some(n) = announced.filter(|n| *n > cap64) {
        return Err(too_big(&format!("of {n} bytes ")));
    }
    let mut buf = Vec::with_capacity(announced.map_or(0, |n| n as usize));
    body.take(cap64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| read_failure(&e))?;
    if buf.len() > cap {
        return Err(too_big(""));
    }
    Ok(Bytes::from(buf))
}

/// A body read fails with an `io::Error` that usually wraps the isahc error beneath.
fn read_failure(e: &std::io::Error) -> Failure {
    if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<isahc::Error>()) {
        return (result_of(inner), inner.to_string());
    }
    let result = match e.kind() {
        std::io::ErrorKind::TimedOut => code::OPERATION_TIMEDOUT,
        std::io::ErrorKind::ConnectionRefused => code::COULDNT_CONNECT,
        _ => code::RECV_ERROR,
    };
    (result, e.to_string())
}

/// The curl result code of a failed exchange: libcurl's own code when the isahc error was
/// built from one (most are), else the nearest code for isahc's error kind.
pub(crate) fn result_of(e: &isahc::Error) -> i64 {
    curl_code(e).unwrap_or_else(|| kind_code(e.kind()))
}

fn curl_code(e: &isahc::Error) -> Option<i64> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<curl::Error>() {
            return Some(i64::from(c.code()));
        }
        cur = err.source();
    }
    None
}

/// isahc error kinds without a libcurl error underneath (failures isahc detects itself).
fn kind_code(kind: &isahc::error::ErrorKind) -> i64 {
    use isahc::error::ErrorKind as K;
    match kind {
        K::ConnectionFailed => code::COULDNT_CONNECT,
        K::Timeout => code::OPERATION_TIMEDOUT,
        K::NameResolution => code::COULDNT_RESOLVE_HOST,
        K::TooManyRedirects => code::TOO_MANY_REDIRECTS,
        K::InvalidRequest => code::URL_MALFORMAT,
        K::BadServerCertificate => code::PEER_FAILED_VERIFICATION,
        K::BadClientCertificate => code::SSL_CERTPROBLEM,
        K::InvalidTlsConfiguration => code::SSL_CACERT_BADFILE,
        K::TlsEngine => code::SSL_CONNECT_ERROR,
        K::ProtocolViolation => code::WEIRD_SERVER_REPLY,
        K::InvalidContentEncoding => code::BAD_CONTENT_ENCODING,
        K::InvalidCredentials => code::LOGIN_DENIED,
        K::ClientInitialization => code::FAILED_INIT,
        K::RequestBodyNotRewindable => code::SEND_FAIL_REWIND,
        _ => code::RECV_ERROR,
    }
}
