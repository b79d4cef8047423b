//! Event ingest parsing: any bytes either become a webhook body that is valid JSON with
//! `created_at` first in `current`, or a refusal; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    if let Ok(event) = herald::payload::parse_event(data, now) {
        let body: serde_json::Value = serde_json::from_str(&event.body).expect("body is JSON");
        assert!(body["current"]["created_at"].is_string());
        assert!(event.body.starts_with("{\"event\":"));
    }
});
