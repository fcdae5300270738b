//! `#admin`: the address of the admin endpoint (metrics, status, reload, the console page)
//! and the token that guards it. Off unless configured. Bound to a loopback address it may go
//! without a token (only this machine reaches it); bound to any other address a token is
//! required, so a node never exposes its reload button and its figures to a network by a
//! one-word mistake.

use std::net::SocketAddr;

use simd_json::OwnedValue;

use super::error::{At, ConfigError};

/// The parsed `#admin` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Requests must carry `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

const EXPECTED: &str =
    r#"an address "IP:PORT" or an object {"listen": "IP:PORT", "token": "secret"}"#;

pub(crate) fn admin(v: &OwnedValue, at: &At, errs: &mut Vec<ConfigError>) -> Option<Admin> {
    let (listen, token) = match v {
        OwnedValue::String(s) => (s.as_str(), None),
        OwnedValue::Object(o) => {
            for (k, _) in o.iter() {
                if k != "listen" && k != "token" {
                    errs.push(
                        at.key(k)
                            .invalid("unknown key (#admin takes `listen` and `token`)"),
                    );
                }
            }
            let listen = match o.get("listen") {
                Some(OwnedValue::String(s)) => s.as_str(),
                Some(other) => {
                    errs.push(at.key("listen").type_err("a string \"IP:PORT\"", other));
                    return None;
                }
                None => {
                    errs.push(at.invalid("missing `listen` (\"IP:PORT\")"));
                    return None;
                }
            };
            let token = match o.get("token") {
                None => None,
                Some(OwnedValue::String(s)) if !s.trim().is_empty() => Some(s.to_string()),
                Some(OwnedValue::String(_)) => {
                    errs.push(at.key("token").invalid("the token is empty"));
                    return None;
                }
                Some(other) => {
                    errs.push(at.key("token").type_err("a string", other));
                    return None;
                }
            };
            (listen, token)
        }
        other => {
            errs.push(at.type_err(EXPECTED, other));
            return None;
        }
    };
    let listen: SocketAddr = match listen.parse() {
        Ok(addr) => addr,
        Err(_) => {
            errs.push(at.invalid(format!(
                "`{listen}` is not an address: expected IP:PORT, e.g. \"127.0.0.1:9180\" or \"[::1]:9180\""
            )));
            return None;
        }
    };
    if token.is_none() && !listen.ip().is_loopback() {
        errs.push(at.invalid(format!(
            "the admin endpoint on {listen} would be reachable beyond this machine: give it a token, {{\"listen\": \"{listen}\", \"token\": \"...\"}}, or bind it to 127.0.0.1"
        )));
        return None;
    }
    Some(Admin { listen, token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Admin, String> {
        let mut bytes = json.as_bytes().to_vec();
        let v: OwnedValue = simd_json::to_owned_value(&mut bytes).unwrap();
        let mut errs = Vec::new();
        let at = At::new("t.json", "#admin");
        match admin(&v, &at, &mut errs) {
            Some(a) if errs.is_empty() => Ok(a),
            _ => Err(errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    #[test]
    fn loopback_needs_no_token_anything_else_does() {
        let a = parse(r#""127.0.0.1:9180""#).unwrap();
        assert_eq!((a.listen.port(), a.token), (9180, None));
        assert!(parse(r#""[::1]:9180""#).is_ok());
        let err = parse(r#""0.0.0.0:9180""#).unwrap_err();
        assert!(err.contains("give it a token"), "{err}");
        let a = parse(r#"{"listen": "0.0.0.0:9180", "token": "s3cret"}"#).unwrap();
        assert_eq!(a.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(parse(r#""localhost""#)
            .unwrap_err()
            .contains("not an address"));
        assert!(parse("9180").unwrap_err().contains("expected an address"));
        assert!(parse(r#"{"listen": "127.0.0.1:1", "token": ""}"#)
            .unwrap_err()
            .contains("empty"));
        assert!(parse(r#"{"listen": "127.0.0.1:1", "tokn": "x"}"#)
            .unwrap_err()
            .contains("unknown key"));
    }
}
