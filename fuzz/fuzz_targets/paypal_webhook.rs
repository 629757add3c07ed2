//! PayPal webhooks: transmission headers, cert-URL allow-list, RSA verify with the pinned test
//! certificate, event mapping. Input format and checks: `reconciled::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reconciled::fuzz::paypal_webhook(data);
});
