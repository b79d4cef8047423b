//! Who may call Herald: API tokens, passwords and signing in.
//!
//! A token is 32 random bytes, shown once and stored only as its SHA-256 hash; the
//! store looks a token up by that hash. A password is stored only as an argon2id hash
//! ([`password`]). Signing in checks an e-mail and a password, is slowed down after
//! failures ([`throttle`]), and answers with a new token that expires.
//!
//! This module decides nothing about roles: the API checks what a token's user may do.
//! It never says whether an e-mail belongs to a user: an unknown e-mail, a user without
//! a password and a wrong password get the same answer, after the same argon2 work.

pub mod cache;
pub mod password;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use tracing::info;

use crate::clock::{SharedClock, Timestamp};
use crate::model::{ApiToken, NewApiToken, User};
use crate::payload::hex_sha256;
use crate::store::{Store, StoreError};

pub use cache::TokenCache;
pub use throttle::{Limits, Throttle};

/// How long a token made by signing in is valid. A working day: long enough not to
/// interrupt, short enough that a forgotten session does not stay open for good.
pub const SIGN_IN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The name a sign-in token has in token lists.
pub const SIGN_IN_TOKEN_NAME: &str = "sign-in";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Deliberately vague: the same for an unknown e-mail and a wrong password.
    #[error("the e-mail or the password is not right")]
    InvalidCredentials,
    #[error("too many failed sign-ins; try again in {} seconds", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error("{0}")]
    InvalidEmail(String),
    #[error("{0}")]
    InvalidPassword(String),
    #[error("cannot hash a password: {0}")]
    Hashing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new API token: a recognisable prefix and 32 random bytes.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("hrld_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Hashes an API token the way the store keeps it. Tokens are random and long, so a
/// fast hash is enough; passwords are not, and get argon2.
pub fn token_hash(token: &str) -> String {
    hex_sha256(token.as_bytes())
}

/// Checks an e-mail address and returns it in lower case, the form users are stored
/// and looked up in.
pub fn normalize_email(text: &str) -> Result<String, AuthError> {
    let email = text.trim().to_lowercase();
    if email.len() > 254 {
        return Err(AuthError::InvalidEmail(format!(
            "e-mail is {} bytes long; the limit is 254",
            email.len()
        )));
    }
    email
        .parse::<lettre::Address>()
        .map_err(|e| AuthError::InvalidEmail(format!("e-mail '{email}' is not valid: {e}")))?;
    Ok(email)
}

/// A successful sign-in: the user and a new token, shown this once.
pub struct SignedIn {
    pub user: User,
    pub token: String,
    pub stored: ApiToken,
}

/// Signing in with an e-mail and a password.
pub struct SignIn {
    store: Arc<dyn Store>,
    clock: SharedClock,
    throttle: Throttle,
    /// Checked against when there is no real hash, so that an unknown e-mail costs the
    /// same time as a wrong password.
    decoy_hash: String,
}

impl SignIn {
    pub async fn new(store: Arc<dyn Store>, clock: SharedClock, limits: Limits) -> SignIn {
        let decoy_hash = password::hash(new_token())
            .await
            .expect("hashing a random token works");
        SignIn {
            store,
            clock,
            throttle: Throttle::new(limits),
            decoy_hash,
        }
    }

    /// Signs in for the API: checks the e-mail and password, then issues a token.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<SignedIn, AuthError> {
        let user = self.authenticate(email, password, client).await?;
        let signed_in = self.issue_token(user, self.clock.now()).await?;
        info!(user_id = %signed_in.user.id, client = %client, "signed in");
        Ok(signed_in)
    }

    /// Checks an e-mail and a password, under the throttle, and issues nothing: the
    /// API's sign-in adds a token, the console a session.
    pub async fn authenticate(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<User, AuthError> {
        let now = self.clock.now();
        if let Some(wait) = self.throttle.wait(email, client, now) {
            info!(client = %client, "sign-in refused: too many failures");
            return Err(AuthError::Throttled(wait));
        }

        let key = email.trim().to_lowercase();
        let record = self.store.sign_in_record(&key).await?;
        let Some(user) = self.check(record, password).await else {
            self.throttle.record_failure(email, client, now);
            info!(client = %client, "sign-in failed");
            return Err(AuthError::InvalidCredentials);
        };

        self.throttle.record_success(email);
        Ok(user)
    }

    /// The user if the password is theirs. Always runs one argon2 verification.
    async fn check(&self, record: Option<(User, Option<String>)>, password: &str) -> Option<User> {
        let (user, hash) = match record {
            Some((user, Some(hash))) => (Some(user), hash),
            _ => (None, self.decoy_hash.clone()),
        };
        let matches = password::verify(password.to_string(), hash).await;
        user.filter(|_| matches)
    }

    async fn issue_token(&self, user: User, now: Timestamp) -> Result<SignedIn, AuthError> {
        let token = new_token();
        let lifetime = chrono::Duration::from_std(SIGN_IN_LIFETIME).expect("lifetime in range");
        let new = NewApiToken {
            user_id: user.id.clone(),
            name: SIGN_IN_TOKEN_NAME.to_string(),
            token_hash: token_hash(&token),
            created_at: now,
            expires_at: Some(now + lifetime),
        };
        let stored = self.store.create_token(&new).await?;
        Ok(SignedIn {
            user,
            token,
            stored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_kept_in_lower_case_and_checked() {
        assert_eq!(
            normalize_email(" Ops@Example.COM ").unwrap(),
            "ops@example.com"
        );
        for bad in ["", "no-at-sign", "two@@example.com", "a b@example.com"] {
            let err = normalize_email(bad).unwrap_err().to_string();
            assert!(err.contains("is not valid"), "{bad}: {err}");
        }
    }

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let (a, b) = (new_token(), new_token());
        assert!(a.starts_with("hrld_") && a.len() == 5 + 43);
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 64);
    }
}
