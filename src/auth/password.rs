//! Passwords: the rules a new one must meet, and argon2id hashes of them.
//!
//! Hashing is deliberately slow (argon2's default cost, about 19 MiB and two passes),
//! so it runs on the blocking thread pool, never on the async workers. API tokens are
//! not hashed here: they are long random strings, for which SHA-256 is enough.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

use super::AuthError;

/// Shorter passwords are too easy to guess, even with the sign-in throttle.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// A bound on the work one request can ask of the hasher.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Refuses a password that is too short or too long; the detail never repeats it.
pub fn check_rules(password: &str) -> Result<(), AuthError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(AuthError::InvalidPassword(format!(
            "password has {chars} characters; it needs at least {MIN_PASSWORD_CHARS}"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::InvalidPassword(format!(
            "password is {} bytes long; the limit is {MAX_PASSWORD_BYTES}",
            password.len()
        )));
    }
    Ok(())
}

/// An argon2id hash in PHC form, with a fresh random salt.
pub async fn hash(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))?
}

fn hash_now(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hashing(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches `hash`. A hash that cannot be read matches nothing.
pub async fn verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || verify_now(&password, &hash))
        .await
        .unwrap_or(false)
}

fn verify_now(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash_now("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_now("correct horse battery", &hash));
        assert!(!verify_now("correct horse battery!", &hash));
        assert!(!verify_now("correct horse battery", "not a hash"));
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_their_salt() {
        assert_ne!(
            hash_now("same password").unwrap(),
            hash_now("same password").unwrap()
        );
    }

    #[test]
    fn short_and_huge_passwords_are_refused_without_echoing_them() {
        let short = check_rules("hunter2").unwrap_err().to_string();
        assert!(
            short.contains("7 characters") && !short.contains("hunter2"),
            "{short}"
        );
        assert!(check_rules(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(check_rules("ten chars!").is_ok());
    }
}
