//! Secrets at rest and API keys: AES-256-GCM sealing under the master key (ring), random
//! 256-bit API keys, their SHA-256 hashes, and the master key file.

use std::io::Write;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 64 hex characters")]
    BadMasterKey,
    #[error("sealed value is malformed or was sealed under another key")]
    Open,
    #[error("random number generator failed")]
    Rng,
    #[error("master key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
}

impl From<ring::error::Unspecified> for CryptoError {
    fn from(_: ring::error::Unspecified) -> Self {
        CryptoError::Open
    }
}

/// The AES-256-GCM key that seals provider API keys, with a short id stored beside each
/// ciphertext so keys can be rotated.
pub struct MasterKey {
    key: LessSafeKey,
    id: String,
    /// Derived from the key (HMAC-SHA256 over a fixed label): the root of every API key's
    /// webhook signing secret.
    webhook_root: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

/// A sealed value: hex of nonce || ciphertext || tag, and the id of the sealing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext_hex: String,
    pub key_id: String,
}

impl MasterKey {
    pub fn from_hex(hex: &str) -> Result<Self, CryptoError> {
        let bytes = hex_decode(hex.trim()).ok_or(CryptoError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadMasterKey);
        }
        let unbound =
            UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| CryptoError::BadMasterKey)?;
        let id = hex_encode(&digest(&SHA256, &bytes).as_ref()[..4]);
        let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
        let mut webhook_root = [0u8; 32];
        webhook_root
            .copy_from_slice(ring::hmac::sign(&label, b"lowart webhook secrets v1").as_ref());
        Ok(Self {
            key: LessSafeKey::new(unbound),
            id,
            webhook_root,
        })
    }

    /// A fresh random key as 64 hex characters.
    pub fn generate_hex() -> Result<String, CryptoError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| CryptoError::Rng)?;
        Ok(hex_encode(&bytes))
    }

    /// Reads the key file; `None` when it does not exist.
    pub fn load_file(path: &Path) -> Result<Option<Self>, CryptoError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(Self::from_hex(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CryptoError::KeyFile {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Creates the key file with a fresh random key (mode 0600; never overwrites).
    pub fn create_file(path: &Path) -> Result<Self, CryptoError> {
        let hex = Self::generate_hex()?;
        write_key_file(path, &hex)?;
        Self::from_hex(&hex)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The root every key's webhook secret is derived from (`domain::jobs::webhook_secret`).
    pub fn webhook_root(&self) -> [u8; 32] {
        self.webhook_root
    }

    pub fn seal(&self, plaintext: &str) -> Result<Sealed, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Rng)?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(self.id.as_bytes()),
            &mut buf,
        )?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(Sealed {
            ciphertext_hex: hex_encode(&out),
            key_id: self.id.clone(),
        })
    }

    pub fn open(&self, sealed: &Sealed) -> Result<String, CryptoError> {
        if sealed.key_id != self.id {
            return Err(CryptoError::Open);
        }
        let bytes = hex_decode(&sealed.ciphertext_hex).ok_or(CryptoError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.id.as_bytes()), &mut buf)?;
        String::from_utf8(plain.to_vec()).map_err(|_| CryptoError::Open)
    }
}

/// Writes `hex` to a new file at `path` (mode 0600, flushed to disk); fails if it exists.
pub fn write_key_file(path: &Path, hex: &str) -> Result<(), CryptoError> {
    let io = |source| CryptoError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(hex.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The SHA-256 of an API key: what is stored and looked up, never the key itself.
pub fn hash_api_key(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// The SHA-256 of any bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_encode(digest(&SHA256, bytes).as_ref())
}

pub fn hash_api_key_hex(key: &str) -> String {
    hex_encode(&hash_api_key(key))
}

/// A new API key: `lw-` followed by 256 random bits in hex.
pub fn generate_api_key() -> Result<String, CryptoError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Rng)?;
    Ok(format!("lw-{}", hex_encode(&bytes)))
}

/// The displayable start of a generated key (`lw-` + 64 hex), enough to recognise it and
/// useless to an attacker; `None` for any other key, of which it could be a large part.
pub fn key_prefix(key: &str) -> Option<String> {
    let generated = key.len() == 3 + 64
        && key.strip_prefix("lw-").is_some_and(|hex| {
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    generated.then(|| key[..10].to_string())
}

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_values_open_and_never_contain_the_plaintext() -> Result<(), CryptoError> {
        let key = MasterKey::from_hex(KEY)?;
        let a = key.seal("sk-upstream-secret")?;
        let b = key.seal("sk-upstream-secret")?;
        assert_ne!(a.ciphertext_hex, b.ciphertext_hex, "nonce must be random");
        assert!(!a.ciphertext_hex.contains(&hex_encode(b"sk-upstream")));
        assert_eq!(key.open(&a)?, "sk-upstream-secret");
        Ok(())
    }

    #[test]
    fn tampered_or_foreign_values_do_not_open() -> Result<(), CryptoError> {
        let key = MasterKey::from_hex(KEY)?;
        let other = MasterKey::from_hex(&KEY.replace("00", "ff"))?;
        let mut sealed = key.seal("secret")?;
        assert!(other.open(&sealed).is_err());
        let flipped = if sealed.ciphertext_hex.as_bytes()[30] == b'0' {
            "1"
        } else {
            "0"
        };
        sealed.ciphertext_hex.replace_range(30..31, flipped);
        assert!(key.open(&sealed).is_err());
        Ok(())
    }

    #[test]
    fn generated_keys_are_256_bit_and_distinct() -> Result<(), CryptoError> {
        let a = generate_api_key()?;
        assert_eq!(a.len(), 3 + 64);
        assert_ne!(a, generate_api_key()?);
        assert_eq!(hash_api_key_hex(&a).len(), 64);
        assert_eq!(key_prefix(&a).as_deref(), a.get(..10));
        assert_eq!(key_prefix("lw-short-chosen-key"), None);
        assert_eq!(key_prefix(&a.to_uppercase()), None);
        Ok(())
    }
}
