//! HMAC-SHA256, the keyed MAC of Stripe, Worldpay and Adflex signatures: one place that keys
//! it and compares in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// A MAC keyed with `key` over the concatenation of `parts`.
#[derive(Clone)]
pub(crate) struct Keyed(HmacSha256);

impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyed(<redacted>)")
    }
}

impl Keyed {
    /// Keys the MAC and feeds it `parts` in order.
    pub(crate) fn new(key: &[u8], parts: &[&[u8]]) -> Keyed {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        for part in parts {
            mac.update(part);
        }
        Keyed(mac)
    }

    /// Whether `tag` is this MAC, compared in constant time.
    pub(crate) fn matches(&self, tag: &[u8]) -> bool {
        self.0.clone().verify_slice(tag).is_ok()
    }

    /// The MAC's bytes (for signing).
    pub(crate) fn bytes(self) -> Vec<u8> {
        self.0.finalize().into_bytes().to_vec()
    }

    /// The MAC as lower-case hex (for signing test requests).
    pub(crate) fn hex(self) -> String {
        hex::encode(self.0.finalize().into_bytes())
    }
}

/// The hex MAC of `parts` under `key`.
pub(crate) fn hex_mac(key: &[u8], parts: &[&[u8]]) -> String {
    Keyed::new(key, parts).hex()
}

/// A MAC keyed once, for a secret that verifies many requests: each endpoint's settings keep
/// one per signing secret. Keying HMAC-SHA256 hashes the key padded to a block twice (inner and
/// outer); a key kept in this form is cloned for each request instead, which was about 4% of
/// the request handlers' CPU under the ingest bench.
#[derive(Clone)]
pub struct MacKey(HmacSha256);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl MacKey {
    pub(crate) fn new(secret: &Secret) -> MacKey {
        MacKey(HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts any key length"))
    }

    /// The MAC over the concatenation of `parts`.
    pub(crate) fn keyed(&self, parts: &[&[u8]]) -> Keyed {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        Keyed(mac)
    }
}

/// Whether any of `tags` is the MAC of `parts` under any of `keys`.
pub(crate) fn verify_any<'t>(
    keys: &[MacKey],
    parts: &[&[u8]],
    tags: impl IntoIterator<Item = &'t [u8]> + Clone,
) -> bool {
    keys.iter().any(|key| {
        let keyed = key.keyed(parts);
        tags.clone().into_iter().any(|tag| keyed.matches(tag))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn known_answer() {
        let mac = hex_mac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(mac, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let tag = hex::decode(&mac).unwrap();
        // A key kept keyed gives the same MAC however often it is used.
        let keys = [MacKey::new(&Secret::new("wrong")), MacKey::new(&Secret::new("Jefe"))];
        for _ in 0..3 {
            assert!(verify_any(&keys, &[b"what do ya want for nothing?"], [tag.as_slice()]));
            assert!(!verify_any(&keys[..1], &[b"what do ya want for nothing?"], [tag.as_slice()]));
            assert!(!verify_any(&keys, &[b"what do ya want for nothing!"], [tag.as_slice()]));
        }
        assert_eq!(format!("{:?}", keys[1]), "MacKey(<redacted>)");
    }
}
