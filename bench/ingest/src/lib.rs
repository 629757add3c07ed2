//! Shared by the load generator, the peer servers and the inbox tool: the Stripe event body,
//! unique ids and Stripe's `v1` signature; [`peer`] holds what the `verify` and `naive` peers do
//! with a request.
//!
//! Every request gets a unique 11-character token (base62 of a bijective mix of a per-run seed
//! and the request index), so event ids are distinct within a run, spread over the key space
//! like Stripe's random ids (new keys land on random index pages, not always on the last one),
//! and practically never collide across runs.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub mod peer;

/// The signing secret the benchmark config gives the `stripe` endpoint.
pub const DEFAULT_SECRET: &str = "whsec_test_bench";

/// Where the per-request token goes.
const U: &str = "@U@";

/// A pretty-printed `payment_intent.succeeded` snapshot event, shaped like the events Stripe
/// sends (API version 2024-06-20). `@U@` is the per-request token, `@T@` the event type and
/// `@C@` the creation time (unix seconds, 10 digits).
const TEMPLATE: &str = r#"{
  "id": "evt_3@U@Ev",
  "object": "event",
  "api_version": "2024-06-20",
  "created": @C@,
  "data": {
    "object": {
      "id": "pi_3@U@",
      "object": "payment_intent",
      "amount": 4599,
      "amount_capturable": 0,
      "amount_details": {
        "tip": {}
      },
      "amount_received": 4599,
      "application": null,
      "application_fee_amount": null,
      "automatic_payment_methods": {
        "allow_redirects": "always",
        "enabled": true
      },
      "canceled_at": null,
      "cancellation_reason": null,
      "capture_method": "automatic_async",
      "client_secret": "pi_3@U@_secret_Hq2kVw9RmT4xZp7LcN1bYd6Fa",
      "confirmation_method": "automatic",
      "created": @C@,
      "currency": "eur",
      "customer": "cus_R8mXq2Lk7VtN4p",
      "description": "Order @U@",
      "invoice": null,
      "last_payment_error": null,
      "latest_charge": "ch_3@U@",
      "livemode": false,
      "metadata": {
        "order_id": "@U@",
        "cart_id": "c7e2a91f-5b3d-4c08-9e6a-1d2f3b4c5a69",
        "shop": "bench-shop-eu"
      },
      "next_action": null,
      "on_behalf_of": null,
      "payment_method": "pm_1Qa7TbLkdIwHu7ixW3cV8nZe",
      "payment_method_configuration_details": {
        "id": "pmc_1Pk0aULkdIwHu7ixq3QpGz1L",
        "parent": null
      },
      "payment_method_options": {
        "card": {
          "installments": null,
          "mandate_options": null,
          "network": null,
          "request_three_d_secure": "automatic"
        },
        "link": {
          "persistent_token": null
        }
      },
      "payment_method_types": [
        "card",
        "link"
      ],
      "processing": null,
      "receipt_email": "customer@example.com",
      "review": null,
      "setup_future_usage": null,
      "shipping": {
        "address": {
          "city": "Lyon",
          "country": "FR",
          "line1": "12 Rue de la République",
          "line2": null,
          "postal_code": "69002",
          "state": null
        },
        "carrier": null,
        "name": "Camille Martin",
        "phone": "+33 4 72 00 00 00",
        "tracking_number": null
      },
      "source": null,
      "statement_descriptor": null,
      "statement_descriptor_suffix": "BENCH SHOP",
      "status": "succeeded",
      "transfer_data": null,
      "transfer_group": null
    }
  },
  "livemode": false,
  "pending_webhooks": 1,
  "request": {
    "id": null,
    "idempotency_key": "pi_3@U@-confirm-7d24c1"
  },
  "type": "@T@"
}
"#;

/// Length of a token.
pub const TOKEN_LEN: usize = 11;

/// The unique token of request `index` in the run with `seed`: distinct for distinct indices.
pub fn token(seed: u64, index: u64) -> [u8; TOKEN_LEN] {
    // The splitmix64 finaliser is a bijection on u64, and so is xor with the seed.
    let mut x = seed ^ index;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; TOKEN_LEN];
    // 62^11 > 2^64: every u64 has exactly one 11-digit base62 form.
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(x % 62) as usize];
        x /= 62;
    }
    out
}

/// A token that sorts in request order (a 4-digit run prefix, then 7 base62 digits of the
/// index): new keys always land on the last page of the inbox's unique index, as with
/// sequential ids. For comparison with [`token`]; real Stripe ids are random.
pub fn sequential_token(seed: u64, index: u64) -> [u8; TOKEN_LEN] {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; TOKEN_LEN];
    let (mut hi, mut lo) = (seed, index);
    for slot in out[4..].iter_mut().rev() {
        *slot = DIGITS[(lo % 62) as usize];
        lo /= 62;
    }
    for slot in out[..4].iter_mut().rev() {
        *slot = DIGITS[(hi % 62) as usize];
        hi /= 62;
    }
    out
}

/// The event body, split at the token so a request is assembled with a few copies.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Vec<u8>>,
    len: usize,
}

impl Template {
    /// A template for events of `event_type` created at `created` (unix seconds).
    pub fn new(event_type: &str, created: i64) -> Template {
        let text = TEMPLATE.replace("@T@", event_type).replace("@C@", &created.to_string());
        let pieces: Vec<Vec<u8>> = text.split(U).map(|p| p.as_bytes().to_vec()).collect();
        let len = pieces.iter().map(Vec::len).sum::<usize>() + (pieces.len() - 1) * TOKEN_LEN;
        Template { pieces, len }
    }

    /// The body length (the same for every token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the body is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the body for `token` to `out`.
    pub fn write(&self, token: &[u8; TOKEN_LEN], out: &mut Vec<u8>) {
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(token);
            }
            out.extend_from_slice(piece);
        }
    }

    /// The body for `token`.
    pub fn body(&self, token: &[u8; TOKEN_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.write(token, &mut out);
        out
    }
}

/// The event id Stripe would send for `token` (`evt_…`), the inbox's dedup key.
pub fn event_id(token: &[u8; TOKEN_LEN]) -> String {
    format!("evt_3{}Ev", std::str::from_utf8(token).expect("base62 is ASCII"))
}

/// Stripe's `v1`: lower-case hex of HMAC-SHA256 over `"{t}.{body}"`, keyed with the secret's
/// UTF-8 bytes.
pub fn sign_v1(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 64] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = [0u8; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut out).expect("64 hex digits");
    out
}

/// The `Stripe-Signature` header value.
pub fn signature_header(timestamp: i64, v1: &[u8; 64]) -> String {
    format!("t={timestamp},v1={}", std::str::from_utf8(v1).expect("hex is ASCII"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A seed that differs between runs (clock nanoseconds and the process id).
pub fn run_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Minimal `--key value` / `--flag` argument parsing, enough for these tools.
#[derive(Debug)]
pub struct Args {
    pairs: Vec<(String, Option<String>)>,
    /// Positional arguments, in order.
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`; `flags` are the options that take no value.
    pub fn parse(flags: &[&str]) -> Args {
        let mut pairs = Vec::new();
        let mut positional = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    pairs.push((k.to_owned(), Some(v.to_owned())));
                } else if flags.contains(&name) {
                    pairs.push((name.to_owned(), None));
                } else {
                    let v = it.next().unwrap_or_else(|| die(&format!("--{name} needs a value")));
                    pairs.push((name.to_owned(), Some(v)));
                }
            } else {
                positional.push(a);
            }
        }
        Args { pairs, positional }
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }

    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The value of `--name` parsed, or `default`.
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{name}: bad value {v:?}"))),
        }
    }
}

/// Prints `message` and exits with status 2.
pub fn die(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_fixed_length() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            assert!(seen.insert(token(42, i)));
        }
    }

    #[test]
    fn body_has_the_token_everywhere_and_a_constant_length() {
        let t = Template::new("payment_intent.succeeded", 1_700_000_000);
        let a = t.body(&token(1, 1));
        let b = t.body(&token(1, 2));
        assert_eq!(a.len(), t.len());
        assert_eq!(b.len(), t.len());
        let text = String::from_utf8(a).unwrap();
        assert!(!["@U@", "@T@", "@C@"].iter().any(|p| text.contains(p)));
    }

    #[test]
    fn signature_matches_stripe_docs_construction() {
        // HMAC-SHA256("whsec_test_bench", "1700000000.{}") computed independently (python hmac).
        let sig = sign_v1(b"whsec_test_bench", 1_700_000_000, b"{}");
        assert_eq!(&sig[..], b"3a9333053fa571b972d118b2065d1bf671e82d2c2a2b311e97bed231c992671a");
    }
}
