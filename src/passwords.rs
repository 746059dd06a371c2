//! Passwords: Argon2id (the `argon2` crate, RustCrypto), stored as PHC
//! strings (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
//!
//! Parameters: m = 19 MiB, t = 2, p = 1: the first Argon2id configuration
//! OWASP's Password Storage Cheat Sheet recommends (and the crate's
//! default). On these 2-core machines a hash takes tens of milliseconds:
//! negligible for one sign-in, ruinous for someone guessing against a
//! stolen database (memory-hard, so GPUs gain little). p = 1 because a
//! small box serves several users at once: one core per hash. The salt is
//! 16 bytes from the OS CSPRNG (`ring`).
//!
//! Memory: each hash in progress holds 19 MiB, so at most `AT_ONCE` run at
//! once; others wait up to `WAIT` (then `Busy`), which keeps a burst of
//! sign-ins within a known footprint. A sign-in for an unknown name, a
//! disabled user or one without a password verifies against a fixed hash
//! all the same, so the answer takes as long as for a wrong password.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Password length, in bytes: long enough to be a password, short enough
/// that hashing it is cheap to bound.
pub const MIN_BYTES: usize = 8;
pub const MAX_BYTES: usize = 1024;
/// Hashes computed at once (19 MiB each).
const AT_ONCE: usize = 2;
/// Longest wait for a turn to hash.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub enum PasswordError {
    /// Too short or too long (`MIN_BYTES`..=`MAX_BYTES`).
    Length,
    /// Every turn to hash stayed taken for `WAIT`.
    Busy,
    Internal(String),
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Turns to hash (see the module doc).
struct Turns {
    taken: Mutex<usize>,
    freed: Condvar,
}

fn turns() -> &'static Turns {
    static TURNS: OnceLock<Turns> = OnceLock::new();
    TURNS.get_or_init(|| Turns {
        taken: Mutex::new(0),
        freed: Condvar::new(),
    })
}

fn with_turn<T>(f: impl FnOnce() -> T) -> Result<T, PasswordError> {
    let t = turns();
    let deadline = Instant::now() + WAIT;
    let mut taken = t.taken.lock().unwrap_or_else(|e| e.into_inner());
    while *taken >= AT_ONCE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PasswordError::Busy);
        }
        taken = t
            .freed
            .wait_timeout(taken, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    *taken += 1;
    drop(taken);
    struct Give<'a>(&'a Turns);
    impl Drop for Give<'_> {
        fn drop(&mut self) {
            *self.0.taken.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            self.0.freed.notify_one();
        }
    }
    let _give = Give(t);
    Ok(f())
}

pub fn check_length(password: &str) -> Result<(), PasswordError> {
    if (MIN_BYTES..=MAX_BYTES).contains(&password.len()) {
        Ok(())
    } else {
        Err(PasswordError::Length)
    }
}

/// The PHC string of a new hash of `password`.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    check_length(password)?;
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| PasswordError::Internal("no random bytes for a salt".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Internal(e.to_string()))?;
    with_turn(|| {
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Internal(e.to_string()))
    })?
}

/// A hash nobody's password matches, verified in place of a missing one.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        hash("portcullis decoy password, never anyone's")
            .unwrap_or_else(|_| "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into())
    })
}

/// Whether `password` matches `stored` (a PHC string). With no stored
/// hash, the decoy is verified (same work) and the answer is false.
pub fn verify(password: &str, stored: Option<&str>) -> Result<bool, PasswordError> {
    let phc = stored.unwrap_or_else(|| decoy());
    let parsed = PasswordHash::new(phc).map_err(|e| PasswordError::Internal(e.to_string()))?;
    // Over-long input is refused without hashing it (after the same
    // parsing work); it can never have been set.
    if password.len() > MAX_BYTES {
        return Ok(false);
    }
    let ok = with_turn(|| {
        argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })?;
    Ok(ok && stored.is_some())
}

/// Reads a password from standard input (the CLI; never an argument):
/// the first line, without its line end.
pub fn read_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {}", e))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    check_length(&pw).map_err(|_| {
        format!(
            "a password is {} to {} bytes (read from standard input)",
            MIN_BYTES, MAX_BYTES
        )
    })?;
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_carry_the_stated_parameters() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", h);
        assert!(verify("correct horse battery", Some(&h)).unwrap());
        assert!(!verify("correct horse batterY", Some(&h)).unwrap());
        assert!(!verify("correct horse battery", None).unwrap());
        assert_ne!(hash("correct horse battery").unwrap(), h, "salted");
        assert_eq!(hash("short"), Err(PasswordError::Length));
        assert!(!verify(&"x".repeat(MAX_BYTES + 1), Some(&h)).unwrap());
    }
}
