//! PayPal IPN: form and charset decoding, receiver check, dedup key, mapping. Input format and
//! checks: `reconciled::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reconciled::fuzz::paypal_ipn(data);
});
