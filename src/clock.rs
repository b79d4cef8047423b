//! The one source of time for the delivery engine and the store's timestamps.
//!
//! Production uses [`SystemClock`]. Tests use [`ManualClock`], which only moves when the
//! test advances it, so a four-hour retry schedule runs in seconds. Network timeouts are
//! not driven by this clock: they measure real time spent waiting on a socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

pub type Timestamp = DateTime<Utc>;

#[async_trait]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Returns once `now() >= deadline`.
    async fn sleep_until(&self, deadline: Timestamp);
}

pub type SharedClock = Arc<dyn Clock>;

/// Drops what is finer than a microsecond, the precision times are stored with, so a
/// time read back from the store equals the time that was written.
fn to_micros(at: Timestamp) -> Timestamp {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        to_micros(Utc::now())
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
pub struct ManualClock {
    now: Mutex<Timestamp>,
    ticks: watch::Sender<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Arc<Self> {
        let start = to_micros(start);
        let (ticks, _) = watch::channel(start);
        Arc::new(ManualClock {
            now: Mutex::new(start),
            ticks,
        })
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().expect("clock lock");
        *now += chrono::Duration::from_std(by).expect("duration in range");
        self.ticks.send_replace(*now);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().expect("clock lock")
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let mut ticks = self.ticks.subscribe();
        while *ticks.borrow_and_update() < deadline {
            if ticks.changed().await.is_err() {
                return;
            }
        }
    }
}
