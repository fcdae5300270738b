//! Broker URLs: `scheme://host:port?filter=IN,OUT` (spec/stage.md §4.1), plus the connection
//! limits of a listener as further `&`-separated options (`maxconn=N&perip=M&deadline=MS`,
//! see [`super::admission`]). The port is taken after the last `:` so `[::]:8081` and
//! `::1:8081` both work; a missing scheme means TCP. `ws://host:port/path?...` is a WebSocket
//! listener (see [`super::ws`]): the path is the one its HTTP upgrade must ask for (`/` when
//! none is given). `wss://` is refused with a pointer to a TLS-terminating proxy.

use super::admission::Limits;
use crate::codec::framing::{FilterError, FrameSpec};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Udp,
    /// WebSocket over TCP: one frame per message (`broker.ready` only).
    Ws,
}

/// A parsed `broker.ready` / `broker.join` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    /// Host without IPv6 brackets (`::`, `0.0.0.0`, `localhost`).
    pub host: String,
    pub port: u16,
    pub frame: FrameSpec,
    /// `maxconn`, `perip`, `deadline` (used by `broker.ready` listeners).
    pub limits: Limits,
    /// The HTTP path a `ws://` upgrade must request (`/` when the URL has none); empty for
    /// the other schemes.
    pub path: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("unsupported scheme `{0}` (expected tcp, udp or ws)")]
    Scheme(String),
    #[error("`wss://` is not built in: terminate TLS in a proxy in front (nginx, haproxy) and listen with `ws://` behind it (docs/config.md)")]
    Wss,
    #[error("a path in `{0}` (only ws:// listeners take one)")]
    Path(String),
    #[error("missing or bad port in `{0}` (expected host:port)")]
    Port(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("bad `{key}={value}` (expected a whole number of at least {min})")]
    BadOption {
        key: &'static str,
        value: String,
        min: u64,
    },
    #[error("more than one filter in `{0}` (one of packet, bson or text)")]
    TwoFilters(String),
}

impl UrlError {
    /// The errno `broker.ready` returns for this error (EINVAL for all URL problems).
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, UrlError> {
        let (scheme, rest) = match url.split_once("://") {
            Some(("tcp", rest)) | Some(("", rest)) => (Scheme::Tcp, rest),
            Some(("udp", rest)) => (Scheme::Udp, rest),
            Some(("ws", rest)) => (Scheme::Ws, rest),
            Some(("wss", _)) => return Err(UrlError::Wss),
            Some((other, _)) => return Err(UrlError::Scheme(other.to_string())),
            None => (Scheme::Tcp, url),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        // The path starts at the first `/` (a bracketed IPv6 host has none).
        let (authority, path) = match authority.find('/') {
            Some(at) => authority.split_at(at),
            None => (authority, ""),
        };
        let path = match (scheme, path) {
            (Scheme::Ws, "") => "/".to_string(),
            (Scheme::Ws, path) => path.to_string(),
            (_, "") => String::new(),
            (_, _) => return Err(UrlError::Path(url.to_string())),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| UrlError::Port(url.to_string()))?;
        let port: u16 = port.parse().map_err(|_| UrlError::Port(url.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let (filter, limits) = parse_query(query.unwrap_or(""))?;
        Ok(BrokerUrl {
            scheme,
            host: host.to_string(),
            port,
            frame: FrameSpec::parse(filter)?,
            limits,
            path,
        })
    }

    /// `host:port` in the form `ToSocketAddrs` accepts (brackets around IPv6 literals).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Splits the query into its one filter (`packet=4k,10k`) and the limits options.
fn parse_query(query: &str) -> Result<(Option<&str>, Limits), UrlError> {
    let mut filter = None;
    let mut limits = Limits::default();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        match key {
            "maxconn" => limits.maxconn = Some(number("maxconn", value, 1)? as u32),
            "perip" => limits.perip = Some(number("perip", value, 1)? as u32),
            "deadline" => limits.deadline_ms = number("deadline", value, 0)?,
            _ if filter.is_some() => return Err(UrlError::TwoFilters(query.to_string())),
            _ => filter = Some(part),
        }
    }
    Ok((filter, limits))
}

/// A whole number of at least `min` that fits a u32 (a cap of 0 would refuse everything,
/// so caps start at 1; `deadline=0` turns the deadline off).
fn number(key: &'static str, value: &str, min: u64) -> Result<u64, UrlError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&n| n >= min && n <= u64::from(u32::MAX))
        .ok_or_else(|| UrlError::BadOption {
            key,
            value: value.to_string(),
            min,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::framing::Framing;

    #[test]
    fn parses_the_seed_urls() {
        let u = BrokerUrl::parse("tcp://0.0.0.0:8081?packet=4k,10k").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Tcp, "0.0.0.0", 8081)
        );
        assert_eq!(
            (u.frame.framing, u.frame.input, u.frame.output),
            (Framing::Packet, 4096, 10240)
        );
        let u = BrokerUrl::parse("tcp://[::]:8081").unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("::", "[::]:8081".to_string())
        );
        assert_eq!(u.frame.framing, Framing::Raw);
        let u = BrokerUrl::parse("127.0.0.1:9?text=2k,4k").unwrap();
        assert_eq!((u.scheme, u.frame.framing), (Scheme::Tcp, Framing::Text));
        assert_eq!(
            BrokerUrl::parse("udp://1.2.3.4:5").unwrap().scheme,
            Scheme::Udp
        );
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            BrokerUrl::parse("http://x:1"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("tcp://x"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("tcp://x:99999"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("tcp://x:1?zip=1"),
            Err(UrlError::Filter(_))
        ));
    }

    #[test]
    fn parses_websocket_urls() {
        let u = BrokerUrl::parse("ws://0.0.0.0:8088/path?packet=4k,10k&maxconn=5").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (Scheme::Ws, "0.0.0.0", 8088, "/path")
        );
        assert_eq!(
            (u.frame.framing, u.frame.input, u.limits.maxconn),
            (Framing::Packet, 4096, Some(5))
        );
        let u = BrokerUrl::parse("ws://[::1]:9?text=1k,1k").unwrap();
        assert_eq!((u.host.as_str(), u.path.as_str()), ("::1", "/"));
        let u = BrokerUrl::parse("ws://h:1/a/b").unwrap();
        assert_eq!((u.path.as_str(), u.frame.framing), ("/a/b", Framing::Raw));
        assert_eq!(BrokerUrl::parse("wss://h:1/x"), Err(UrlError::Wss));
        assert!(matches!(
            BrokerUrl::parse("tcp://h:1/x"),
            Err(UrlError::Path(_))
        ));
        assert_eq!(BrokerUrl::parse("tcp://h:1").unwrap().path, "");
    }

    #[test]
    fn parses_the_limits_options() {
        let u =
            BrokerUrl::parse("tcp://0.0.0.0:8081?packet=4k,10k&maxconn=100&perip=3&deadline=500")
                .unwrap();
        assert_eq!((u.frame.framing, u.frame.input), (Framing::Packet, 4096));
        assert_eq!(
            u.limits,
            Limits {
                maxconn: Some(100),
                perip: Some(3),
                deadline_ms: 500
            }
        );
        // Options in any order, without a filter, and the defaults.
        let u = BrokerUrl::parse("tcp://x:1?deadline=0&text=1k,1k").unwrap();
        assert_eq!(
            (u.frame.framing, u.limits.deadline()),
            (Framing::Text, None)
        );
        let u = BrokerUrl::parse("tcp://x:1?perip=1").unwrap();
        assert_eq!(u.frame.framing, Framing::Raw);
        assert_eq!(
            BrokerUrl::parse("tcp://x:1").unwrap().limits,
            Limits::default()
        );
        assert_eq!(
            Limits::default().deadline(),
            Some(std::time::Duration::from_secs(10))
        );
    }

    #[test]
    fn refuses_bad_limits() {
        for bad in [
            "maxconn=0",
            "maxconn=-1",
            "maxconn=ten",
            "maxconn=",
            "perip=0",
            "perip=1.5",
            "deadline=-5",
            "maxconn=4294967296",
        ] {
            let url = format!("tcp://x:1?packet=4k,4k&{bad}");
            let err = BrokerUrl::parse(&url).unwrap_err();
            assert!(matches!(err, UrlError::BadOption { .. }), "{bad}: {err}");
            assert_eq!(err.errno(), libc::EINVAL);
        }
        assert!(matches!(
            BrokerUrl::parse("tcp://x:1?packet=1k,1k&text=1k,1k"),
            Err(UrlError::TwoFilters(_))
        ));
    }
}
