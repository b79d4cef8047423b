//! The benchmark's receiver: answers every request with 200 at once and notes when each
//! webhook arrived. A second kind accepts connections and never answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;
use axum::Router;

#[derive(Clone, Default)]
pub struct Arrivals {
    inner: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Arrivals {
    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().len()
    }

    /// Arrival time of every delivery, by webhook-id (several per id with several endpoints).
    pub fn take(&self) -> HashMap<String, Vec<Instant>> {
        let mut by_id: HashMap<String, Vec<Instant>> = HashMap::new();
        for (id, at) in self.inner.lock().unwrap().drain(..) {
            by_id.entry(id).or_default().push(at);
        }
        by_id
    }
}

/// Starts the fast receiver; returns its base URL.
pub async fn start_fast(arrivals: Arrivals) -> String {
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let arrivals = arrivals.clone();
        async move {
            let at = Instant::now();
            if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                arrivals.inner.lock().unwrap().push((id.to_string(), at));
            }
            "{}"
        }
    });
    serve(app).await
}

/// Starts a receiver that reads requests and never answers them.
pub async fn start_silent() -> String {
    let app = Router::new().fallback(std::future::pending::<&'static str>);
    serve(app).await
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver binds");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
