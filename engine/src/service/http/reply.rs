//! The answer to one `curl.so` request (spec services.md §5.2 "Reply") as plain data, the
//! curl result codes it carries, the `Content-Type` split into mime type and parameters, and
//! the spec's rule for which bodies reach Lua as text.

use bytes::Bytes;

/// Named curl result codes (`CURLcode`, curl's libcurl-errors list). A failure inside libcurl
/// reports libcurl's own code, so codes not named here can appear too.
pub mod code {
    pub const OK: i64 = 0;
    pub const UNSUPPORTED_PROTOCOL: i64 = 1;
    pub const FAILED_INIT: i64 = 2;
    pub const URL_MALFORMAT: i64 = 3;
    pub const COULDNT_RESOLVE_HOST: i64 = 6;
    pub const COULDNT_CONNECT: i64 = 7;
    pub const WEIRD_SERVER_REPLY: i64 = 8;
    pub const PARTIAL_FILE: i64 = 18;
    pub const OPERATION_TIMEDOUT: i64 = 28;
    pub const SSL_CONNECT_ERROR: i64 = 35;
    pub const BAD_FUNCTION_ARGUMENT: i64 = 43;
    pub const TOO_MANY_REDIRECTS: i64 = 47;
    pub const SSL_CERTPROBLEM: i64 = 58;
    pub const PEER_FAILED_VERIFICATION: i64 = 60;
    pub const BAD_CONTENT_ENCODING: i64 = 61;
    pub const FILESIZE_EXCEEDED: i64 = 63;
    pub const SEND_FAIL_REWIND: i64 = 65;
    pub const LOGIN_DENIED: i64 = 67;
    pub const SSL_CACERT_BADFILE: i64 = 77;
    pub const RECV_ERROR: i64 = 56;
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpReply {
    /// The URL as requested.
    pub url: String,
    /// The `Location` of a final answer that is a redirect this client did not follow (too
    /// many redirects, or a scheme other than http/https) — curl's `CURLINFO_REDIRECT_URL`.
    pub redirect_url: Option<String>,
    /// The URL of the last request sent, after any redirects — curl's
    /// `CURLINFO_EFFECTIVE_URL`. `None` when no request could be sent (a bad URL).
    pub effective_url: Option<String>,
    /// The HTTP status of the last answer, 0 when none came.
    pub status: u16,
    /// Every `Set-Cookie` value, redirects' included, in arrival order; `None` when there
    /// was none.
    pub cookie: Option<Vec<String>>,
    pub data: HttpData,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpData {
    /// The mime type, lower-cased (`"text/html"`); empty when the answer named none.
    pub mime: String,
    /// The content type's parameters (`charset = "utf-8"`), names lower-cased.
    pub params: Vec<(String, String)>,
    /// Body bytes received (after content decoding).
    pub length: u64,
    /// Download speed of the last answer, bytes per second.
    pub bps: f64,
    pub content: Bytes,
    /// A curl result code (`code`), 0 = ok.
    pub result: i64,
    /// What went wrong, empty on success.
    pub message: String,
    /// Seconds from the start of the request to the end of the reply, redirects included.
    pub time: f64,
}

impl HttpData {
    /// No body: a failure, or an answer whose body was not read.
    pub fn empty() -> HttpData {
        HttpData {
            mime: String::new(),
            params: Vec::new(),
            length: 0,
            bps: 0.0,
            content: Bytes::new(),
            result: code::OK,
            message: String::new(),
            time: 0.0,
        }
    }
}

impl HttpReply {
    /// The reply to a request that got no HTTP answer at all.
    pub fn failed(url: &str, effective_url: Option<String>, result: i64, message: String) -> Self {
        HttpReply {
            url: url.to_string(),
            redirect_url: None,
            effective_url,
            status: 0,
            cookie: None,
            data: HttpData {
                result,
                message,
                ..HttpData::empty()
            },
        }
    }

    /// Spec §5.2: whether the body reaches Lua as a string (see [`is_textual`]).
    pub fn is_textual(&self) -> bool {
        is_textual(&self.data.mime)
    }
}

/// Spec §5.2: `text/*`, `*/json` and an unknown (absent or unparsable) content type are text,
/// compressed on the wire and a plain string in Lua; anything else is binary.
pub fn is_textual(mime: &str) -> bool {
    let mime = mime.trim();
    let Some((kind, sub)) = mime.split_once('/') else {
        return true;
    };
    kind.eq_ignore_ascii_case("text") || sub.eq_ignore_ascii_case("json")
}

/// Splits `text/html; charset="utf-8"` into `("text/html", [("charset", "utf-8")])`. A
/// parameter without `=` is kept with an empty value; quotes around a value are dropped.
pub fn parse_content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let p = p.trim();
            if p.is_empty() {
                return None;
            }
            let (name, val) = p.split_once('=').unwrap_or((p, ""));
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(val);
            Some((name.trim().to_ascii_lowercase(), val.to_string()))
        })
        .collect();
    (mime, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_textual_rule() {
        assert!(is_textual("text/html"));
        assert!(is_textual("TEXT/plain"));
        assert!(is_textual("application/json"));
        assert!(is_textual(""));
        assert!(is_textual("garbage"));
        assert!(!is_textual("image/png"));
        assert!(!is_textual("application/octet-stream"));
        assert!(!is_textual("application/jsonp"));
    }

    #[test]
    fn http_content_type_params() {
        let (mime, params) = parse_content_type("Text/HTML; Charset=\"UTF-8\" ; q ;");
        assert_eq!(mime, "text/html");
        assert_eq!(
            params,
            vec![
                ("charset".to_string(), "UTF-8".to_string()),
                ("q".to_string(), String::new())
            ]
        );
        assert_eq!(parse_content_type(""), (String::new(), vec![]));
    }
}
