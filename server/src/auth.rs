//! Who is calling: roles, password hashing, random secrets, and the login rate limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// What a user may do. Each role includes the ones below it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything (agents, jobs, reports), changes nothing.
    Viewer,
    /// Also runs, cancels and edits jobs.
    Operator,
    /// Also manages users, agents, enrolment and settings.
    Admin,
}

impl Role {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}' (roles: admin, operator, viewer)"
            )),
        }
    }
}

/// Argon2id hash of a password (slow on purpose: run it off the async threads).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// True when `password` matches the stored `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new random secret: `prefix` and 32 random bytes, URL-safe.
pub fn new_secret(prefix: &str) -> Result<String, String> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ))
}

/// How a random secret (session, token) is stored: its SHA-256. The secret has 256 bits of
/// entropy, so a fast hash is enough and lookups stay cheap.
pub fn secret_hash(secret: &str) -> String {
    let d = sha2::Sha256::digest(secret.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)
}

/// The CSRF token of a console session: derived from its secret (which only the
/// browser's cookie holds), so it needs no storage and dies with the session.
pub fn csrf_token(session_secret: &str) -> String {
    secret_hash(&format!("csrf:{session_secret}"))
}

/// Equal strings, compared in time that does not depend on where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Failed logins allowed per address within [`WINDOW`] before further attempts are refused.
const MAX_FAILURES: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);

/// Counts failed logins per client address and refuses more than [`MAX_FAILURES`] a minute.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginLimiter {
    /// Seconds to wait when `ip` must not try now.
    pub fn retry_after(&self, ip: IpAddr) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (n, since) = map.get(&ip)?;
        let left = WINDOW.checked_sub(since.elapsed())?;
        (*n >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    /// Note a failed attempt.
    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Forget old windows so the map cannot grow without bound.
        map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        entry.0 += 1;
    }

    /// Forget the failures of `ip` after a good login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secrets() {
        let h = hash_password("correct horse").expect("hash");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        let a = new_secret("hft_").expect("secret");
        assert!(a.starts_with("hft_") && a.len() > 40);
        assert_ne!(a, new_secret("hft_").expect("secret"));
        assert_ne!(secret_hash(&a), a);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn limiter_refuses_after_five_failures() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        for _ in 0..MAX_FAILURES {
            assert!(l.retry_after(ip).is_none());
            l.failed(ip);
        }
        assert!(l.retry_after(ip).is_some());
        l.succeeded(ip);
        assert!(l.retry_after(ip).is_none());
    }
}
