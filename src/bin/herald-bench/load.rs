//! The load generator: concurrent clients posting events, as a burst or at a steady
//! rate, each 202 noted with the time it came back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::herald::Herald;

/// Event ids with the time their 202 arrived.
pub type Accepted = Vec<(String, Instant)>;

fn event_body(event: &str, n: usize) -> Value {
    json!({"event": event, "object_id": n, "current": {"status": "active", "plan": "fiber-100"}})
}

async fn post(http: &reqwest::Client, base: &str, token: &str, body: &Value) -> Option<String> {
    let response = http
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .ok()?;
    if response.status() != 202 {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    answer["id"].as_str().map(str::to_string)
}

/// Posts with `clients` concurrent clients until `count` events are accepted or `limit`
/// has passed; returns what was accepted and how long it took.
pub async fn burst(
    herald: &Herald,
    event: &str,
    clients: usize,
    count: usize,
    limit: Duration,
) -> (Accepted, Duration) {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::with_capacity(count.min(1 << 20))));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, token) = (
            herald.http.clone(),
            herald.base.clone(),
            herald.token.clone(),
        );
        let (next, accepted, event) = (next.clone(), accepted.clone(), event.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || started.elapsed() > limit {
                    return;
                }
                if let Some(id) = post(&http, &base, &token, &event_body(&event, n)).await {
                    accepted.lock().unwrap().push((id, Instant::now()));
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    (accepted, elapsed)
}

/// Posts `rate` events a second for `duration`, each from its own task.
pub async fn steady(herald: &Herald, event: &str, rate: u32, duration: Duration) -> Accepted {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0;
    while started.elapsed() < duration {
        tick.tick().await;
        let (http, base, token) = (
            herald.http.clone(),
            herald.base.clone(),
            herald.token.clone(),
        );
        let (accepted, event) = (accepted.clone(), event.to_string());
        n += 1;
        tasks.push(tokio::spawn(async move {
            if let Some(id) = post(&http, &base, &token, &event_body(&event, n)).await {
                accepted.lock().unwrap().push((id, Instant::now()));
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let accepted = std::mem::take(&mut *accepted.lock().unwrap());
    accepted
}

/// Posts straight to a URL with `clients` concurrent clients for `duration`; returns
/// how many requests were answered.
pub async fn ceiling(url: &str, clients: usize, duration: Duration) -> usize {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client builds");
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, answered) = (http.clone(), url.to_string(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let body = event_body("account.status", 1).to_string();
            while started.elapsed() < duration {
                let sent = http
                    .post(&url)
                    .header("webhook-id", "ceiling")
                    .body(body.clone())
                    .send()
                    .await;
                if sent.is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    answered.load(Ordering::Relaxed)
}
