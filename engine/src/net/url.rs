//! Broker URLs: `scheme://host:port?filter=IN,OUT` (spec/stage.md §4.1). The port is taken
//! after the last `:` so `[::]:8081` and `::1:8081` both work; a missing scheme means TCP.

use crate::codec::framing::{FilterError, FrameSpec};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Tcp,
    Udp,
}

/// A parsed `broker.ready` / `broker.join` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    /// Host without IPv6 brackets (`::`, `0.0.0.0`, `localhost`).
    pub host: String,
    pub port: u16,
    pub frame: FrameSpec,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("unsupported scheme `{0}` (expected tcp or udp)")]
    Scheme(String),
    #[error("missing or bad port in `{0}` (expected host:port)")]
    Port(String),
    #[error(transparent)]
    Filter(#[from] FilterError),
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
            Some((other, _)) => return Err(UrlError::Scheme(other.to_string())),
            None => (Scheme::Tcp, url),
        };
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| UrlError::Port(url.to_string()))?;
        let port: u16 = port.parse().map_err(|_| UrlError::Port(url.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        Ok(BrokerUrl {
            scheme,
            host: host.to_string(),
            port,
            frame: FrameSpec::parse(query)?,
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
}
