//! Endpoint signing secrets at rest: sealed with ChaCha20-Poly1305 under a key from the
//! settings (or a key file in the data directory), so a copy of the database alone does
//! not let anyone forge webhooks. The store only ever sees sealed values; the engine
//! opens them to sign, and the API opens them when a caller asks for the secret.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const SEALED_PREFIX: &str = "sealed1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key must be base64 of 32 bytes")]
    BadKey,
    #[error("a stored secret cannot be opened with this secret key (was the key changed?)")]
    CannotOpen,
}

pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    pub fn from_base64(key: &str) -> Result<SecretBox, SecretError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| SecretError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    /// Reads the key file, or creates one readable only by its owner.
    pub fn from_key_file(path: &Path) -> anyhow::Result<(SecretBox, bool)> {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok((SecretBox::from_base64(&text)?, false));
        }
        let key = STANDARD.encode(ChaCha20Poly1305::generate_key(&mut OsRng));
        write_private(path, &key)?;
        Ok((SecretBox::from_base64(&key)?, true))
    }

    pub fn seal(&self, secret: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(&nonce, secret.as_bytes())
            .expect("sealing cannot fail");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(bytes))
    }

    /// Opens a sealed secret; a value stored before sealing existed passes unchanged.
    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        let Some(encoded) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::CannotOpen)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SecretError::CannotOpen);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| SecretError::CannotOpen)?;
        String::from_utf8(plain).map_err(|_| SecretError::CannotOpen)
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key() {
        let key = STANDARD.encode([7u8; 32]);
        let other = STANDARD.encode([8u8; 32]);
        let sealed = SecretBox::from_base64(&key).unwrap().seal("whsec_abc");
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains("whsec_abc"));
        assert_eq!(
            SecretBox::from_base64(&key).unwrap().open(&sealed).unwrap(),
            "whsec_abc"
        );
        assert!(SecretBox::from_base64(&other)
            .unwrap()
            .open(&sealed)
            .is_err());
        assert!(SecretBox::from_base64("c2hvcnQ=").is_err());
    }
}
