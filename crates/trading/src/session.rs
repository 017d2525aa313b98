//! Sessions: who is calling. A login exchanges a seeded user's email and
//! password for a random bearer token; the token's SHA-256 is what the
//! database and the cache hold, so neither a database dump nor a look at
//! Redis hands out a working token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a session lives after its last use (sliding expiry).
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);

/// A session is extended at most this often, so that a busy client does
/// not turn every read into a database write.
pub const EXTEND_EVERY: Duration = Duration::from_secs(60);

/// The password every seeded (demo) user has. Seeded users share it, and
/// one argon2id hash of it (one salt), so that seeding 100,000 users does
/// not spend minutes in argon2. Demo data only: a real account's hash has
/// a salt of its own.
pub const DEMO_PASSWORD: &str = "larder-demo";

/// A session as cached (`session:{token_hash}`) and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who logged in.
    pub user_id: i64,
    /// Unix milliseconds after which the session is void, whatever any
    /// cache still holds.
    pub expires_at_ms: u64,
}

impl Session {
    /// Whether the session has run out at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// Whether it is time to push the expiry forward (sliding expiry).
    pub fn wants_extension(&self, now_ms: u64) -> bool {
        let full = now_ms + SESSION_TTL.as_millis() as u64;
        full.saturating_sub(self.expires_at_ms) >= EXTEND_EVERY.as_millis() as u64
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new token: 256 bits from the thread's CSPRNG (ChaCha, seeded from the
/// OS), as 64 hex characters.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex(&bytes)
}

/// What the database and cache know a token by: the SHA-256 of the token,
/// as 64 lowercase hex digits.
pub fn token_hash(token: &str) -> TokenHash {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = [0u8; 64];
    for (pair, b) in hex.chunks_exact_mut(2).zip(digest) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0xf)];
    }
    TokenHash(hex)
}

/// A token's hash ([`token_hash`]), held inline: every authenticated
/// request computes one, and a `Copy` value moves into the session cache's
/// loader and the caller without an allocation. Reads as a `&str`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 64]);

impl TokenHash {
    /// The 64 hex digits.
    pub fn as_str(&self) -> &str {
        // Only `token_hash` builds one, from ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for TokenHash {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not the digits: a hash in a log line is as good as the token for
/// finding the session row.
impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.as_str()[..8])
    }
}

/// The session family's key: `session:{token_hash}`.
impl larder::key::KeyPart for TokenHash {
    fn write_part(&self, w: &mut larder::key::PartWriter<'_>) {
        w.text(self.as_str())
    }
}

/// Compares two secrets in time independent of where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX_DIGITS[usize::from(b >> 4)] as char);
        out.push(HEX_DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Password hashing with argon2id (the crate's defaults: 19 MiB, 2 passes).
/// CPU-heavy by design: callers run it on the blocking pool.
pub mod password {
    use argon2::Argon2;
    use argon2::password_hash::phc::PasswordHash;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    /// A PHC string (`$argon2id$v=19$...`) with a fresh random salt.
    pub fn hash(password: &str) -> Result<String, String> {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| format!("argon2: {e}"))
    }

    /// A hash of a random password nobody knows, made once per process:
    /// what a login for an unknown email is verified against.
    pub fn decoy() -> &'static str {
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        DECOY.get_or_init(|| hash(&super::new_token()).unwrap_or_default())
    }

    /// Whether `password` matches the stored PHC string. A malformed stored
    /// hash matches nothing.
    pub fn verify(password: &str, stored: &str) -> bool {
        match PasswordHash::new(stored) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a).as_str(), a);
        assert_ne!(token_hash(&a), token_hash(&b));
        assert_eq!(token_hash(&a).len(), 64);
        // The SHA-256 of "abc", the FIPS 180-2 example.
        assert_eq!(
            token_hash("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let stored = password::hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(password::verify("correct horse", &stored));
        assert!(!password::verify("correct horsf", &stored));
        assert!(!password::verify("correct horse", "not a phc string"));
        // A fresh salt each time.
        assert_ne!(stored, password::hash("correct horse").unwrap());
    }

    #[test]
    fn sliding_expiry_extends_at_most_once_a_minute() {
        let now = 1_000_000_000;
        let fresh = Session {
            user_id: 1,
            expires_at_ms: now + SESSION_TTL.as_millis() as u64,
        };
        assert!(!fresh.wants_extension(now));
        assert!(!fresh.wants_extension(now + 59_000));
        assert!(fresh.wants_extension(now + 60_000));
        assert!(!fresh.is_expired(now));
        assert!(fresh.is_expired(fresh.expires_at_ms));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
