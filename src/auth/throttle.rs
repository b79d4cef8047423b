//! Slowing down password guessing. Failed sign-ins are counted per account (the e-mail
//! as given, whether or not a user has it, so the answer reveals nothing) and per client
//! address. The first few failures cost nothing; after them each failure blocks that
//! account or address for twice as long as the one before, up to a limit, and a
//! blocked sign-in is refused before any password is checked.
//!
//! FIXME: the counts live in this process's memory. A restart forgets them, and
//! several `herald serve` processes on one database would each count on their own; a
//! table in the store would fix both once there is more than one process.
//! FIXME: the address is the TCP peer. Behind a reverse proxy every client shares the
//! proxy's address and so one budget; trusting a forwarded header needs a setting that
//! names the proxy, which does not exist yet.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Timestamp;

/// How patient the throttle is.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Failures in a row for one account before it is blocked at all.
    pub free_per_account: u32,
    /// The same for one client address, which may try many accounts.
    pub free_per_address: u32,
    pub first_block: Duration,
    pub max_block: Duration,
    /// A count is forgotten this long after its last failure.
    pub forget_after: Duration,
    /// A bound on memory: past it, the entries idle for longest are dropped first.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            free_per_account: 5,
            free_per_address: 20,
            first_block: Duration::from_secs(1),
            max_block: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            max_entries: 100_000,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    Account(String),
    Address(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Timestamp,
    blocked_until: Timestamp,
}

pub struct Throttle {
    limits: Limits,
    entries: Mutex<HashMap<Key, Failures>>,
}

impl Throttle {
    pub fn new(limits: Limits) -> Throttle {
        Throttle {
            limits,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long this account and address must still wait; `None` when they may try now.
    pub fn wait(&self, email: &str, address: IpAddr, now: Timestamp) -> Option<Duration> {
        let entries = self.entries.lock().expect("throttle lock");
        let blocked_until = [account(email), address_key(address)]
            .iter()
            .filter_map(|key| entries.get(key))
            .map(|f| f.blocked_until)
            .max()?;
        (blocked_until - now).to_std().ok().filter(|d| !d.is_zero())
    }

    pub fn record_failure(&self, email: &str, address: IpAddr, now: Timestamp) {
        let mut entries = self.entries.lock().expect("throttle lock");
        if entries.len() + 2 > self.limits.max_entries {
            self.make_room(&mut entries, now);
        }
        let free = [self.limits.free_per_account, self.limits.free_per_address];
        for (key, free) in [account(email), address_key(address)].into_iter().zip(free) {
            let entry = entries.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: now,
            });
            if self.forgotten(entry, now) {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            entry.blocked_until = now + self.block_after(entry.count, free);
        }
    }

    /// A right password clears the account's count, not the address's: one's own
    /// account must not reset the budget for guessing at others.
    pub fn record_success(&self, email: &str) {
        let mut entries = self.entries.lock().expect("throttle lock");
        entries.remove(&account(email));
    }

    fn forgotten(&self, failures: &Failures, now: Timestamp) -> bool {
        (now - failures.last).to_std().unwrap_or_default() >= self.limits.forget_after
    }

    /// No block for the free failures, then `first_block`, doubling, up to `max_block`.
    fn block_after(&self, count: u32, free: u32) -> chrono::Duration {
        let Some(beyond) = count.checked_sub(free) else {
            return chrono::Duration::zero();
        };
        let factor = 1u32.checked_shl(beyond).unwrap_or(u32::MAX);
        let block = self
            .limits
            .first_block
            .saturating_mul(factor)
            .min(self.limits.max_block);
        chrono::Duration::from_std(block).unwrap_or_default()
    }

    fn make_room(&self, entries: &mut HashMap<Key, Failures>, now: Timestamp) {
        entries.retain(|_, f| !self.forgotten(f, now));
        // Room for the two entries a failure may add.
        while entries.len() + 2 > self.limits.max_entries {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            entries.remove(&oldest);
        }
    }
}

fn account(email: &str) -> Key {
    Key::Account(email.trim().to_lowercase())
}

/// One IPv6 host usually owns a whole /64, so that is what counts as one address.
fn address_key(address: IpAddr) -> Key {
    match address {
        IpAddr::V4(v4) => Key::Address(IpAddr::V4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::Address(IpAddr::V4(v4)),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Key::Address(IpAddr::V6(prefix.into()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn five_failures_are_free_then_the_block_doubles() {
        let throttle = Throttle::new(Limits::default());
        let home = ip("192.0.2.1");
        for _ in 0..4 {
            throttle.record_failure("a@example.com", home, at(0));
            assert_eq!(throttle.wait("a@example.com", home, at(0)), None);
        }
        throttle.record_failure("A@Example.com", home, at(0));
        assert_eq!(
            throttle.wait("a@example.com", home, at(0)),
            Some(Duration::from_secs(1))
        );
        throttle.record_failure("a@example.com", home, at(1));
        assert_eq!(
            throttle.wait("a@example.com", home, at(1)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(throttle.wait("a@example.com", home, at(3)), None);
    }

    #[test]
    fn the_block_never_exceeds_the_limit() {
        let throttle = Throttle::new(Limits::default());
        for _ in 0..100 {
            throttle.record_failure("a@example.com", ip("192.0.2.1"), at(0));
        }
        let wait = throttle.wait("a@example.com", ip("192.0.2.9"), at(0));
        assert_eq!(wait, Some(Duration::from_secs(15 * 60)));
    }

    #[test]
    fn an_address_trying_many_accounts_is_blocked_after_twenty_failures() {
        let throttle = Throttle::new(Limits::default());
        let guesser = ip("2001:db8::1");
        for n in 0..20 {
            throttle.record_failure(&format!("user{n}@example.com"), guesser, at(0));
        }
        let other_host_same_network = ip("2001:db8::2");
        assert!(throttle
            .wait("fresh@example.com", other_host_same_network, at(0))
            .is_some());
        assert!(throttle
            .wait("fresh@example.com", ip("2001:db9::1"), at(0))
            .is_none());
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let limits = Limits {
            free_per_address: 5,
            ..Limits::default()
        };
        let throttle = Throttle::new(limits);
        for _ in 0..5 {
            throttle.record_failure("a@example.com", ip("192.0.2.1"), at(0));
        }
        throttle.record_success("a@example.com");
        assert!(throttle
            .wait("a@example.com", ip("192.0.2.2"), at(0))
            .is_none());
        assert!(throttle
            .wait("b@example.com", ip("192.0.2.1"), at(0))
            .is_some());
    }

    #[test]
    fn failures_are_forgotten_an_hour_after_the_last() {
        let throttle = Throttle::new(Limits::default());
        for _ in 0..5 {
            throttle.record_failure("a@example.com", ip("192.0.2.1"), at(0));
        }
        throttle.record_failure("a@example.com", ip("192.0.2.1"), at(3600));
        assert_eq!(
            throttle.wait("a@example.com", ip("192.0.2.1"), at(3600)),
            None
        );
    }

    #[test]
    fn memory_stays_bounded_by_dropping_the_longest_idle() {
        let limits = Limits {
            max_entries: 4,
            ..Limits::default()
        };
        let throttle = Throttle::new(limits);
        for n in 0..10 {
            throttle.record_failure(&format!("u{n}@example.com"), ip("192.0.2.1"), at(n));
        }
        assert!(throttle.entries.lock().unwrap().len() <= 4);
    }
}
