//! Generated secrets and tokens, and how they are stored: SHA-256 only.
//!
//! A generated value is a fixed prefix (so a leaked one can be recognised by a scanner) followed
//! by 43 base62 characters drawn from the operating system's random source: about 256 bits.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of generated consumer keys (`type: new`).
pub const KEY_PREFIX: &str = "krk_";
/// Prefix of data-plane tokens.
pub const DATA_PLANE_TOKEN_PREFIX: &str = "krdp_";
/// Prefix of admin tokens minted by `realm-service token create`.
pub const ADMIN_TOKEN_PREFIX: &str = "kradm_";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_CHARS: usize = 43;

/// The SHA-256 of a secret or token: the only form that is ever stored.
pub type SecretHash = [u8; 32];

pub fn hash(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two stored hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A new random secret with the given prefix.
pub fn generate(prefix: &str) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(prefix.len() + RANDOM_CHARS);
    out.push_str(prefix);
    let mut produced = 0;
    let mut buf = [0u8; 64];
    while produced < RANDOM_CHARS {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 248 = 4 * 62: rejecting the top bytes keeps every character equally likely.
            if b < 248 && produced < RANDOM_CHARS {
                out.push(ALPHABET[(b % 62) as usize] as char);
                produced += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_prefix_length_and_differ() {
        let a = generate(KEY_PREFIX).unwrap();
        let b = generate(KEY_PREFIX).unwrap();
        assert!(a.starts_with("krk_"));
        assert_eq!(a.len(), 4 + 43);
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn hash_is_sha256() {
        let h = hash("abc");
        assert_eq!(
            h[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "sha256(abc) starts with ba7816bf"
        );
        assert!(hashes_equal(&h, &hash("abc")));
        assert!(!hashes_equal(&h, &hash("abd")));
    }
}
