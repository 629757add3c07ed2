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

/// Whether any of `tags` is the MAC of `parts` under any of `secrets` (each secret keyed once).
pub(crate) fn verify_any<'t>(
    secrets: &[Secret],
    parts: &[&[u8]],
    tags: impl IntoIterator<Item = &'t [u8]> + Clone,
) -> bool {
    secrets.iter().any(|secret| {
        let keyed = Keyed::new(secret.expose(), parts);
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
        let secrets = [Secret::new("wrong"), Secret::new("Jefe")];
        assert!(verify_any(&secrets, &[b"what do ya want for nothing?"], [tag.as_slice()]));
        assert!(!verify_any(&secrets[..1], &[b"what do ya want for nothing?"], [tag.as_slice()]));
        assert!(!verify_any(&secrets, &[b"what do ya want for nothing!"], [tag.as_slice()]));
    }
}
