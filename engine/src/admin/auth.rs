//! The admin token check: with a token configured, every request but the console page
//! itself (which holds no figures) needs `Authorization: Bearer <token>`. The comparison
//! takes the same time wherever the first difference is, so the token cannot be guessed a
//! byte at a time from response times.

/// Whether a request with this `Authorization` header value may pass.
pub fn authorized(token: Option<&str>, header: Option<&[u8]>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    constant_time_eq(given.trim_ascii(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_everything_passes() {
        assert!(authorized(None, None));
        assert!(authorized(None, Some(b"Bearer whatever")));
    }

    #[test]
    fn with_a_token_only_the_exact_bearer_passes() {
        let t = Some("s3cret");
        assert!(authorized(t, Some(b"Bearer s3cret")));
        assert!(!authorized(t, None));
        assert!(!authorized(t, Some(b"Bearer s3cre")));
        assert!(!authorized(t, Some(b"Bearer s3cret2")));
        assert!(!authorized(t, Some(b"Bearer S3cret")));
        assert!(!authorized(t, Some(b"Basic s3cret")));
        assert!(!authorized(t, Some(b"s3cret")));
        assert!(!authorized(t, Some(b"Bearer ")));
    }
}
