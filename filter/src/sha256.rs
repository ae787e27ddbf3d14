//! SHA-256 helpers: keys are only ever kept as digests.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// Parses 64 hex digits (either case) into a digest.
pub fn parse_sha256_hex(hex: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_of_abc() {
        let d = sha256(b"abc");
        assert_eq!(
            parse_sha256_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            Some(d)
        );
    }

    #[test]
    fn hex_parsing_rejects_bad_input() {
        assert_eq!(parse_sha256_hex("abc"), None);
        assert_eq!(parse_sha256_hex(&"g".repeat(64)), None);
        assert!(parse_sha256_hex(&"AB".repeat(32)).is_some());
    }
}
