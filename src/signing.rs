//! Endpoint secrets and the Standard Webhooks signature.
//!
//! A secret is `whsec_` followed by base64 of 24 random bytes. A signature is
//! `v1,<base64 HMAC-SHA256 of "<webhook-id>.<timestamp>.<body>">` keyed by the secret's
//! decoded bytes; several signatures are separated by a space.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

pub fn new_secret() -> String {
    let mut key = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut key);
    format!("{PREFIX}{}", STANDARD.encode(key))
}

fn key_bytes(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .map_err(|_| "secret is not whsec_ followed by base64".to_string())
}

/// One `v1,…` signature of a body sent with this id at this unix timestamp.
pub fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let key = key_bytes(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[&str], webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|s| sign(s, webhook_id, timestamp, body).ok())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether any signature in `header` was made with `secret`.
pub fn verify(secret: &str, webhook_id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return false;
    };
    let Ok(expected) = sign(secret, webhook_id, timestamp, body) else {
        return false;
    };
    header
        .split(' ')
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The worked example published with the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn verify_accepts_any_of_several_signatures() {
        let (old, new) = (new_secret(), new_secret());
        let header = signature_header(&[&new, &old], "evt_1", 10, b"{}");
        assert!(verify(&old, "evt_1", "10", b"{}", &header));
        assert!(verify(&new, "evt_1", "10", b"{}", &header));
        assert!(!verify(&new_secret(), "evt_1", "10", b"{}", &header));
        assert!(!verify(&new, "evt_1", "11", b"{}", &header));
    }
}
