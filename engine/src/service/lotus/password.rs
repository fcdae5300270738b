//! Account passwords for lotus logins (`accounts` in the lotus.so block): a PHC string made by
//! `stage --hash-password` (Argon2id, random salt, the crate's default cost), so no plain
//! password has to sit in a configuration file.
//!
//! Argon2 is slow on purpose (tens of msec of CPU). Logins come from a studio's own gate
//! processes, a handful per deploy, so the check runs where the login arrives; a password
//! that verified is remembered per thread (keyed by a keyed hash, never the password
//! itself), so a gate that reconnects does not pay again.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes `password` into a PHC string (`$argon2id$v=19$...`).
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

thread_local! {
    static VERIFIED: RefCell<(RandomState, HashSet<u64>)> = RefCell::new((RandomState::new(), HashSet::new()));
}

/// Whether `password` matches the PHC string `phc`. A malformed `phc` never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    let key = VERIFIED.with(|v| v.borrow().0.hash_one((phc, password)));
    if VERIFIED.with(|v| v.borrow().1.contains(&key)) {
        return true;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    if ok {
        VERIFIED.with(|v| v.borrow_mut().1.insert(key));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify("s3cret", &phc));
        assert!(verify("s3cret", &phc), "remembered");
        assert!(!verify("S3cret", &phc));
        assert!(!verify("s3cret", "$argon2id$garbage"));
        assert_ne!(hash("s3cret").unwrap(), phc, "salted");
    }
}
