//! The command keys of `=route` (spec services.md §4): `@` (subscriber control), `=` (a claim,
//! the reply address of the willingness query) and the publisher's target list
//! `[*]id[?arg][!fail_cb][=ret_cb],...`; also the offer token and the dotted-prefix fallback.

use std::fmt;

/// What a command key (the text after `"<sign>:"`) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    /// `@`: subscribe / modify / pause / keep-alive (spec §4.2); the value says which.
    Control,
    /// `=`: a subscriber's answer to a willingness query (spec §4.3 step 2).
    Claim,
    /// Anything else: a publication.
    Publish(Targets),
}

/// A publisher's target list (spec §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// A leading `*`: every eligible subscription gets the message, no offer.
    pub broadcast: bool,
    pub list: Vec<Target>,
}

/// One comma-separated token; each is routed on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    /// `?arg`: a hint for the willingness check (it travels inside the original key).
    pub hint: Option<String>,
    /// `!fail_cb`: told `(original_key, value)` when nobody takes the message.
    pub fail: Option<String>,
    /// `=ret_cb`: where the taker's handler result goes.
    pub ret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn parse_key(key: &str) -> Result<RouteKey, KeyError> {
    match key {
        "@" => Ok(RouteKey::Control),
        "=" => Ok(RouteKey::Claim),
        _ => parse_targets(key).map(RouteKey::Publish),
    }
}

/// Splits `[*]tok,tok,...`. Suffixes may come in any order after the id; spec open question
/// 16: they are stripped before matching, so the fallback sees the bare id.
pub fn parse_targets(key: &str) -> Result<Targets, KeyError> {
    let (broadcast, rest) = match key.strip_prefix('*') {
        Some(r) => (true, r),
        None => (false, key),
    };
    let list = rest
        .split(',')
        .map(|tok| {
            parse_target(tok)
                .ok_or_else(|| KeyError(format!("route key `{key}`: empty target in `{tok}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Targets { broadcast, list })
}

fn parse_target(tok: &str) -> Option<Target> {
    let cut = tok.find(['?', '!', '=']).unwrap_or(tok.len());
    let id = &tok[..cut];
    if id.is_empty() {
        return None;
    }
    let mut t = Target {
        id: id.to_string(),
        hint: None,
        fail: None,
        ret: None,
    };
    let mut rest = &tok[cut..];
    while let Some(mark) = rest.chars().next() {
        let body = &rest[1..];
        let end = body.find(['?', '!', '=']).unwrap_or(body.len());
        let value = Some(body[..end].to_string()).filter(|v| !v.is_empty());
        match mark {
            '?' => t.hint = value,
            '!' => t.fail = value,
            _ => t.ret = value,
        }
        rest = &body[end..];
    }
    Some(t)
}

/// Spec §4.3: an id with no eligible subscriber falls back to its dotted prefixes, longest
/// first (`a.b.c` → `a.b.`, `a.`), as `stage.waitfor` groups do.
pub fn fallbacks(id: &str) -> impl Iterator<Item = &str> {
    id.rmatch_indices('.')
        .map(move |(i, _)| &id[..=i])
        .filter(move |p| p.len() < id.len())
}

/// An offer's id; its text form (hex) is the token of the willingness query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A claim: `token` or `token?cb1,cb2` (delivery limited to those callback ids).
pub fn parse_claim(text: &str) -> Option<(OfferId, Option<Vec<String>>)> {
    let (token, only) = match text.split_once('?') {
        Some((t, cbs)) => (
            t,
            Some(
                cbs.split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
        ),
        None => (text, None),
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(token, 16).ok()?;
    Some((OfferId(id), only))
}

/// Spec §4.3: the callback id of a delivered message ends in `=ret_cb` when the publisher gave
/// one, replacing the subscriber's own default `=ret`.
pub fn with_ret(callback: &str, ret: Option<&str>) -> String {
    match ret {
        None => callback.to_string(),
        Some(ret) => {
            let base = callback.split_once('=').map_or(callback, |(b, _)| b);
            format!("{base}={ret}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str, hint: Option<&str>, fail: Option<&str>, ret: Option<&str>) -> Target {
        Target {
            id: id.into(),
            hint: hint.map(Into::into),
            fail: fail.map(Into::into),
            ret: ret.map(Into::into),
        }
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("@"), Ok(RouteKey::Control));
        assert_eq!(parse_key("="), Ok(RouteKey::Claim));
        assert_eq!(
            parse_key("login!r__fail"),
            Ok(RouteKey::Publish(Targets {
                broadcast: false,
                list: vec![target("login", None, Some("r__fail"), None)]
            }))
        );
    }

    #[test]
    fn targets_with_suffixes_in_any_order() {
        let t = parse_targets("*a.b?x!f=r,c=r2!f2").unwrap();
        assert!(t.broadcast);
        assert_eq!(
            t.list,
            vec![
                target("a.b", Some("x"), Some("f"), Some("r")),
                target("c", None, Some("f2"), Some("r2")),
            ]
        );
        assert!(parse_targets("a,,b").is_err());
        assert!(parse_targets("?x").is_err());
        assert!(parse_targets("*").is_err());
    }

    #[test]
    fn dotted_fallbacks() {
        assert_eq!(fallbacks("a.b.c").collect::<Vec<_>>(), ["a.b.", "a."]);
        assert_eq!(fallbacks("a.b.").collect::<Vec<_>>(), ["a."]);
        assert_eq!(fallbacks("abc").count(), 0);
    }

    #[test]
    fn claims() {
        assert_eq!(parse_claim("1f"), Some((OfferId(0x1f), None)));
        assert_eq!(
            parse_claim("1f?a,b"),
            Some((OfferId(0x1f), Some(vec!["a".into(), "b".into()])))
        );
        assert_eq!(parse_claim("zz"), None);
        assert_eq!(parse_claim(""), None);
        assert_eq!(OfferId(0x1f).to_string(), "1f");
    }

    #[test]
    fn ret_rewrite() {
        assert_eq!(with_ret("cb", None), "cb");
        assert_eq!(with_ret("cb", Some("r")), "cb=r");
        assert_eq!(with_ret("cb=ret", Some("r")), "cb=r");
        assert_eq!(with_ret("lobby:cb=ret", Some("r")), "lobby:cb=r");
    }
}
