//! Access Worldpay: Event-Signature parse, HMAC verify by key id, envelope and event mapping. Input
//! format and checks: `reconciled::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reconciled::fuzz::worldpay_event(data);
});
