//! Turning a host's event request into the webhook body every endpoint receives.
//!
//! The body is built once, at ingest, and stored as bytes: every attempt to every
//! endpoint sends exactly those bytes. The host's values are copied as the host wrote
//! them (numbers, escapes and key order included); only `created_at` is put first in
//! `current`.

use chrono::{DateTime, SecondsFormat, Utc};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;

/// The largest event request accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    event: String,
    object_id: Box<RawValue>,
    current: IndexMap<String, Box<RawValue>>,
    #[serde(default)]
    previous: Option<Box<RawValue>>,
    #[serde(default)]
    created_at: Option<String>,
}

/// An event request that passed every check of its shape.
#[derive(Debug)]
pub struct ParsedEvent {
    pub event_type: String,
    /// The `object_id` as the host wrote it, used to keep per-object order.
    pub object_key: String,
    pub created_at: Timestamp,
    pub body: String,
    pub request_hash: String,
}

/// Why an event request was refused; the message names the bad value.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    InvalidField(String),
}

pub fn parse_event(raw: &[u8], accepted_at: Timestamp) -> Result<ParsedEvent, PayloadError> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        PayloadError::Malformed(format!(
            "body is not valid UTF-8 at byte {}",
            e.valid_up_to()
        ))
    })?;
    check_depth(raw)?;
    check_surrogates(raw)?;
    if !text.trim_start().starts_with('{') && serde_json::from_str::<&RawValue>(text).is_ok() {
        return Err(PayloadError::InvalidField(format!(
            "body must be a JSON object like {{\"event\": …}}, not {}",
            shorten(text.trim())
        )));
    }
    let event: EventIn = serde_json::from_str(text).map_err(describe_json_error)?;

    check_object_id(&event.object_id)?;
    if let Some(previous) = &event.previous {
        check_previous(previous)?;
    }
    let created_at = match &event.created_at {
        Some(text) => parse_created_at(text)?,
        None => accepted_at,
    };

    Ok(ParsedEvent {
        body: build_body(&event, created_at),
        event_type: event.event,
        object_key: event.object_id.get().to_string(),
        created_at,
        request_hash: hex_sha256(raw),
    })
}

fn describe_json_error(err: serde_json::Error) -> PayloadError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => PayloadError::InvalidField(err.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            PayloadError::Malformed(format!("body is not valid JSON: {err}"))
        }
    }
}

/// How deeply objects and arrays may nest in an event request.
pub const MAX_DEPTH: usize = 64;

/// Bounds nesting, which the parser does not bound inside values it copies as written.
fn check_depth(raw: &[u8]) -> Result<(), PayloadError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in raw {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => depth += 1,
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
        if depth > MAX_DEPTH {
            return Err(PayloadError::InvalidField(format!(
                "body nests objects and arrays deeper than {MAX_DEPTH} levels"
            )));
        }
    }
    Ok(())
}

/// Refuses a `\u` escape of half a UTF-16 surrogate pair without its other half. JSON's
/// grammar lets one through, but it stands for no character: the body is copied to
/// receivers as written, and a strict parser there would refuse the whole webhook.
fn check_surrogates(raw: &[u8]) -> Result<(), PayloadError> {
    let unit_at = |at: usize| -> Option<u32> {
        let escape = raw.get(at..at + 6)?;
        if !escape.starts_with(b"\\u") {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(&escape[2..]).ok()?, 16).ok()
    };
    // A backslash appears only inside strings, where it starts an escape.
    let mut at = 0;
    while at < raw.len() {
        if raw[at] != b'\\' {
            at += 1;
            continue;
        }
        let paired = match unit_at(at) {
            Some(0xD800..=0xDBFF) => matches!(unit_at(at + 6), Some(0xDC00..=0xDFFF)),
            Some(0xDC00..=0xDFFF) => false,
            _ => {
                at += 2;
                continue;
            }
        };
        if !paired {
            let escape = String::from_utf8_lossy(&raw[at..at + 6]);
            return Err(PayloadError::InvalidField(format!(
                "body holds {escape} at byte {at}, half of a UTF-16 surrogate pair without \
                 its other half, which is no character"
            )));
        }
        at += 12;
    }
    Ok(())
}

fn check_object_id(raw: &RawValue) -> Result<(), PayloadError> {
    let text = raw.get();
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    let is_string = text.starts_with('"') && text.len() > 2;
    if is_number || is_string {
        return Ok(());
    }
    Err(PayloadError::InvalidField(format!(
        "object_id must be a number or a non-empty string, not {}",
        shorten(text)
    )))
}

fn check_previous(raw: &RawValue) -> Result<(), PayloadError> {
    if raw.get().starts_with('{') || raw.get() == "null" {
        return Ok(());
    }
    Err(PayloadError::InvalidField(format!(
        "previous must be an object, not {}",
        shorten(raw.get())
    )))
}

fn parse_created_at(text: &str) -> Result<Timestamp, PayloadError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            PayloadError::InvalidField(format!(
                "created_at '{}' is not an RFC 3339 time like 2021-05-25T20:48:40+00:00",
                shorten(text)
            ))
        })
}

/// Formats a time the way the webhook body carries it: UTC with `+00:00`.
pub fn format_time(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn build_body(event: &EventIn, created_at: Timestamp) -> String {
    let mut body = String::with_capacity(256);
    body.push_str("{\"event\":");
    body.push_str(&json_string(&event.event));
    body.push_str(",\"object_id\":");
    body.push_str(event.object_id.get());
    body.push_str(",\"current\":{\"created_at\":");
    body.push_str(&json_string(&format_time(created_at)));
    for (key, value) in event
        .current
        .iter()
        .filter(|(k, _)| k.as_str() != "created_at")
    {
        body.push(',');
        body.push_str(&json_string(key));
        body.push(':');
        body.push_str(value.get());
    }
    body.push('}');
    if let Some(previous) = event.previous.as_ref().filter(|p| p.get() != "null") {
        body.push_str(",\"previous\":");
        body.push_str(previous.get());
    }
    body.push('}');
    body
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Timestamp {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn created_at_comes_first_and_host_values_are_copied_exactly() {
        let raw = br#"{"event":"account.status","object_id":42,
            "current":{"status":"active","n":1.50,"s":"\u2028 \ud83d\ude00"}}"#;
        let parsed = parse_event(raw, at()).unwrap();
        assert_eq!(
            parsed.body,
            r#"{"event":"account.status","object_id":42,"current":{"created_at":"2026-01-02T03:04:05+00:00","status":"active","n":1.50,"s":"\u2028 \ud83d\ude00"}}"#
        );
        assert_eq!(parsed.object_key, "42");
    }

    #[test]
    fn host_created_at_is_kept_and_normalized_to_utc() {
        let raw = br#"{"event":"a.b","object_id":"x","current":{},"previous":{"s":1},
            "created_at":"2021-05-25T22:48:40+02:00"}"#;
        let parsed = parse_event(raw, at()).unwrap();
        assert!(parsed
            .body
            .contains(r#""created_at":"2021-05-25T20:48:40+00:00""#));
        assert!(parsed.body.ends_with(r#","previous":{"s":1}}"#));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "not valid JSON"),
            (b"\xff", "not valid UTF-8"),
            (
                br#"{"event":"a.b","current":{}}"#,
                "missing field `object_id`",
            ),
            (
                br#"{"event":"a.b","object_id":null,"current":{}}"#,
                "object_id must be",
            ),
            (
                br#"{"event":"a.b","object_id":1,"current":[]}"#,
                "invalid type",
            ),
            (
                br#"{"event":"a.b","object_id":1,"current":{},"previous":3}"#,
                "previous must",
            ),
            (
                br#"{"event":"a.b","object_id":1,"current":{},"created_at":"x"}"#,
                "created_at 'x'",
            ),
            (
                br#"{"event":"a.b","object_id":1,"current":{},"extra":1}"#,
                "unknown field `extra`",
            ),
        ];
        for (raw, expected) in cases {
            let err = parse_event(raw, at()).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn unpaired_surrogate_escapes_are_refused_and_pairs_kept() {
        let now = Utc::now();
        for body in [
            r#"{"event":"a.b","object_id":1,"current":{"k":"\ud800"}}"#,
            r#"{"event":"a.b","object_id":1,"current":{"k":"\udc00x"}}"#,
            r#"{"event":"a.b","object_id":"\uD83D","current":{}}"#,
            r#"{"event":"a.b","object_id":1,"current":{"k":"\ud800\u0041"}}"#,
        ] {
            let Err(PayloadError::InvalidField(detail)) = parse_event(body.as_bytes(), now) else {
                panic!("{body} was accepted");
            };
            assert!(detail.contains("surrogate"), "{detail}");
        }
        let emoji = r#"{"event":"a.b","object_id":1,"current":{"k":"\ud83d\ude00 \\ud800"}}"#;
        let parsed = parse_event(emoji.as_bytes(), now).unwrap();
        assert!(
            parsed.body.contains(r#""\ud83d\ude00 \\ud800""#),
            "{}",
            parsed.body
        );
    }

    #[test]
    fn nesting_deeper_than_the_parser_limit_is_refused() {
        let deep = format!(
            r#"{{"event":"a.b","object_id":1,"current":{{"x":{}{}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        let err = parse_event(deep.as_bytes(), at()).unwrap_err().to_string();
        assert!(err.contains("deeper than 64 levels"), "{err}");
    }
}
