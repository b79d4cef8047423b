//! Pacing of endpoints that are down.
//!
//! After several failed attempts in a row an endpoint counts as down: its lane stops,
//! and the endpoint gets at most `down_endpoint_rate` attempts a minute, however many
//! deliveries wait for it. The first success ends the pause, and the lane then drains
//! the backlog at full speed, in order. The state is a cache in memory, per process:
//! losing it on a restart costs at most a few extra attempts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Timestamp;

/// Failed attempts in a row after which an endpoint counts as down. One failing
/// delivery (a receiver that rejects one payload) must not slow the others.
pub const DOWN_AFTER: u32 = 5;

#[derive(Default)]
struct Health {
    failures_in_a_row: u32,
    paused_until: Option<Timestamp>,
}

pub struct Pacing {
    gap: chrono::Duration,
    endpoints: Mutex<HashMap<String, Health>>,
}

impl Pacing {
    pub fn new(requests_per_minute: u32) -> Pacing {
        let gap = Duration::from_secs(60) / requests_per_minute.max(1);
        Pacing {
            gap: chrono::Duration::from_std(gap).expect("a minute fits"),
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// Notes an attempt's outcome; returns whether the lane may go on at once.
    pub fn record(&self, endpoint_id: &str, succeeded: bool, at: Timestamp) -> bool {
        let mut endpoints = self.endpoints.lock().expect("pacing lock");
        if succeeded {
            endpoints.remove(endpoint_id);
            return true;
        }
        let health = endpoints.entry(endpoint_id.to_string()).or_default();
        health.failures_in_a_row += 1;
        if health.failures_in_a_row < DOWN_AFTER {
            return true;
        }
        health.paused_until = Some(at + self.gap);
        false
    }

    /// The endpoints paused at `now`, and when the first of them may go again.
    pub fn paused(&self, now: Timestamp) -> (Vec<String>, Option<Timestamp>) {
        let endpoints = self.endpoints.lock().expect("pacing lock");
        let paused: Vec<(&String, Timestamp)> = endpoints
            .iter()
            .filter_map(|(id, h)| h.paused_until.filter(|until| *until > now).map(|u| (id, u)))
            .collect();
        let resume = paused.iter().map(|(_, until)| *until).min();
        (
            paused.into_iter().map(|(id, _)| id.clone()).collect(),
            resume,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_paused_only_after_several_failures_in_a_row() {
        let pacing = Pacing::new(10);
        let now = chrono::Utc::now();
        for _ in 1..DOWN_AFTER {
            assert!(pacing.record("ep", false, now));
        }
        assert!(!pacing.record("ep", false, now));
        let (paused, resume) = pacing.paused(now);
        assert_eq!(paused, vec!["ep".to_string()]);
        assert_eq!(resume, Some(now + chrono::Duration::seconds(6)));
        assert!(pacing
            .paused(now + chrono::Duration::seconds(6))
            .0
            .is_empty());

        assert!(pacing.record("ep", true, now));
        assert!(pacing.paused(now).0.is_empty());
        assert!(
            pacing.record("ep", false, now),
            "a success starts the count again"
        );
    }
}
