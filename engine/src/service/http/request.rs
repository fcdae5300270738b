//! What one `curl.so` request asks for (spec services.md §5.2), as plain data the Lua side
//! builds: the URL, extra header lines, an optional body (raw bytes or a form), and the
//! request's own timeout; plus the spec's timeout arithmetic and the form encoding.

use std::time::Duration;

use bytes::Bytes;

use super::config::HttpConfig;

/// Spec §5.2: the connect timeout is never below one second, however short the total.
pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub url: String,
    /// `header = { Name = "value" }`, sent as `Name: value` lines in this order.
    pub headers: Vec<(String, String)>,
    /// Any body switches the request to POST.
    pub body: Option<Body>,
    /// The request's own total timeout; replaces the configured one and the deadline's.
    pub timeout: Option<Duration>,
}

impl HttpRequest {
    /// A bare URL: `stage.signal("curl:cb", "http://...")` is a GET.
    pub fn get(url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A string or binary `data`, sent as-is.
    Raw(Bytes),
    /// An object `data`: `k=v&...`, form-encoded, in this order.
    Form(Vec<(String, FormValue)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormValue {
    Text(String),
    /// A nested object: becomes `k=a-1,b-2`.
    Pairs(Vec<(String, String)>),
}

impl Body {
    /// The bytes on the wire.
    pub fn encode(&self) -> Bytes {
        match self {
            Body::Raw(b) => b.clone(),
            Body::Form(fields) => Bytes::from(encode_form(fields)),
        }
    }
}

/// `application/x-www-form-urlencoded` as curl's `curl_easy_escape` builds it: every byte but
/// the unreserved ones (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, a space included (`%20`, which
/// form decoders read as a space as they read `+`). In a nested value each key and value is
/// escaped on its own and the `-` / `,` joining them stay literal, so a `,` inside a value
/// (sent `%2C`) cannot be mistaken for a separator.
pub fn encode_form(fields: &[(String, FormValue)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        escape_into(&mut out, key);
        out.push('=');
        match value {
            FormValue::Text(v) => escape_into(&mut out, v),
            FormValue::Pairs(pairs) => {
                for (j, (k, v)) in pairs.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    escape_into(&mut out, k);
                    out.push('-');
                    escape_into(&mut out, v);
                }
            }
        }
    }
    out
}

fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// The limits one request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole exchange, redirects included. `None` = no limit (a zero configured or
    /// requested timeout, which is what 0 means to curl).
    pub total: Option<Duration>,
    pub connect: Duration,
}

/// Spec §5.2: total = the request's own timeout if it has one, else the smaller of the
/// configured timeout and the time left before the message deadline; connect = max(1 s,
/// total / 2). A deadline already reached leaves 1 ms rather than zero, because zero would
/// mean "no limit".
pub fn timeouts(
    config: &HttpConfig,
    request: Option<Duration>,
    time_left: Option<Duration>,
) -> Timeouts {
    let total = match request {
        Some(t) => nonzero(t),
        None => {
            let left = time_left.map(|l| l.max(Duration::from_millis(1)));
            match (nonzero(config.timeout), left) {
                (Some(c), Some(l)) => Some(c.min(l)),
                (c, l) => c.or(l),
            }
        }
    };
    let half = total.map_or(Duration::ZERO, |t| t / 2);
    Timeouts {
        total,
        connect: half.max(MIN_CONNECT_TIMEOUT),
    }
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn text(k: &str, v: &str) -> (String, FormValue) {
        (k.to_string(), FormValue::Text(v.to_string()))
    }

    #[test]
    fn http_form_escapes_everything_but_unreserved() {
        let body = encode_form(&[
            text("name", "a b&c=d"),
            text("ok", "A-z_0.9~"),
            text("ü", "100%"),
        ]);
        assert_eq!(body, "name=a%20b%26c%3Dd&ok=A-z_0.9~&%C3%BC=100%25");
    }

    #[test]
    fn http_form_nested_object_joins_pairs() {
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("b c".to_string(), "2,3".to_string()),
        ];
        let body = encode_form(&[("k".to_string(), FormValue::Pairs(pairs)), text("z", "")]);
        assert_eq!(body, "k=a-1,b%20c-2%2C3&z=");
        assert_eq!(encode_form(&[]), "");
    }

    #[test]
    fn http_timeouts_follow_the_spec() {
        let config = HttpConfig::default();
        // The configured 10 s, connect half of it.
        assert_eq!(
            timeouts(&config, None, None),
            Timeouts {
                total: Some(ms(10_000)),
                connect: ms(5_000)
            }
        );
        // The deadline is nearer: it wins, and connect never drops below 1 s.
        let t = timeouts(&config, None, Some(ms(1500)));
        assert_eq!((t.total, t.connect), (Some(ms(1500)), ms(1000)));
        // The configured timeout is nearer than the deadline.
        assert_eq!(
            timeouts(&config, None, Some(ms(60_000))).total,
            Some(ms(10_000))
        );
        // The request's own replaces both, even when longer.
        let t = timeouts(&config, Some(ms(30_000)), Some(ms(500)));
        assert_eq!((t.total, t.connect), (Some(ms(30_000)), ms(15_000)));
        // A passed deadline still limits (1 ms), never "no limit".
        assert_eq!(timeouts(&config, None, Some(ms(0))).total, Some(ms(1)));
    }

    #[test]
    fn http_timeouts_zero_means_no_limit() {
        let config = HttpConfig {
            timeout: Duration::ZERO,
            ..HttpConfig::default()
        };
        let t = timeouts(&config, None, None);
        assert_eq!((t.total, t.connect), (None, ms(1000)));
        assert_eq!(timeouts(&config, None, Some(ms(700))).total, Some(ms(700)));
        assert_eq!(
            timeouts(&HttpConfig::default(), Some(ms(0)), None).total,
            None
        );
    }
}
