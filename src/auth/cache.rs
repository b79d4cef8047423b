//! A short memory of the tokens already looked up, so that a client sending many
//! requests costs the database one lookup a second, not one per request.
//!
//! What this process changes takes effect at once: revoking a token, signing out,
//! changing or deleting a user empties the memory. A change made by another process on
//! a shared database is seen when the entry runs out, within [`TOKEN_MEMORY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Timestamp;
use crate::model::Principal;

/// How long a looked-up token is trusted without asking the database again.
pub const TOKEN_MEMORY: Duration = Duration::from_secs(1);

/// Past this many entries, the ones that ran out are dropped.
const PRUNE_ABOVE: usize = 4096;

#[derive(Default)]
pub struct TokenCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Principal, Instant)>,
    /// Counts the times the memory was emptied, so that a lookup that began before
    /// a change cannot put what it read back afterwards.
    generation: u64,
}

/// Where a lookup started, to hand back with what it found.
#[derive(Clone, Copy, Debug)]
pub struct Lookup(u64);

impl TokenCache {
    /// The principal for a token hash looked up less than [`TOKEN_MEMORY`] ago, or
    /// where a lookup in the database starts.
    pub fn get(&self, token_hash: &str) -> Result<Principal, Lookup> {
        let inner = self.inner.lock().expect("token cache lock");
        match inner.entries.get(token_hash) {
            Some((principal, at)) if at.elapsed() < TOKEN_MEMORY => Ok(principal.clone()),
            _ => Err(Lookup(inner.generation)),
        }
    }

    /// Remembers what a lookup found, unless the memory was emptied since it started.
    pub fn put(&self, lookup: Lookup, token_hash: &str, principal: &Principal) {
        let mut inner = self.inner.lock().expect("token cache lock");
        if inner.generation != lookup.0 {
            return;
        }
        if inner.entries.len() >= PRUNE_ABOVE {
            inner
                .entries
                .retain(|_, (_, at)| at.elapsed() < TOKEN_MEMORY);
        }
        inner
            .entries
            .insert(token_hash.to_string(), (principal.clone(), Instant::now()));
    }

    /// Notes a last-used time just written to the database.
    pub fn touched(&self, token_hash: &str, at: Timestamp) {
        let mut inner = self.inner.lock().expect("token cache lock");
        if let Some((principal, _)) = inner.entries.get_mut(token_hash) {
            principal.last_used_at = Some(at);
        }
    }

    /// Forgets every token: called after any change to tokens or users.
    pub fn forget_all(&self) {
        let mut inner = self.inner.lock().expect("token cache lock");
        inner.entries.clear();
        inner.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn principal() -> Principal {
        Principal {
            user_id: "usr_1".to_string(),
            token_id: "tok_1".to_string(),
            role: Role::Admin,
            last_used_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_token_is_remembered_until_the_memory_is_emptied() {
        let cache = TokenCache::default();
        let lookup = cache.get("h").unwrap_err();
        cache.put(lookup, "h", &principal());
        assert_eq!(cache.get("h").unwrap().token_id, "tok_1");
        cache.forget_all();
        assert!(cache.get("h").is_err());
    }

    #[test]
    fn a_lookup_that_began_before_a_change_is_not_remembered() {
        let cache = TokenCache::default();
        let lookup = cache.get("h").unwrap_err();
        cache.forget_all();
        cache.put(lookup, "h", &principal());
        assert!(cache.get("h").is_err());
    }
}
