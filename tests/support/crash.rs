//! What the crash harnesses share (`tests/crash.rs`, `tests/crash_shared.rs`, through
//! `#[path]`): the environment's settings, a seeded generator, and the Stripe events they send.

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (xorshift), so a seed repeats a run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The body of a Stripe PaymentIntent event for `order`: `succeeded` (10.00 USD received) or
/// `processing`.
pub fn event(id: &str, action: &str, order: u64) -> Vec<u8> {
    let status = if action == "succeeded" { "succeeded" } else { "processing" };
    let received = if action == "succeeded" { 1000 } else { 0 };
    format!(
        r#"{{"id":"{id}","object":"event","api_version":"2024-06-20","created":1795000000,"livemode":false,"type":"payment_intent.{action}","data":{{"object":{{"id":"pi_crash_{order}","object":"payment_intent","amount":1000,"amount_received":{received},"currency":"usd","metadata":{{"order_id":"{order}"}},"receipt_email":"buyer{order}@example.com","status":"{status}"}}}}}}"#
    )
    .into_bytes()
}
