//! PayPal: the PAYPAL-CERT-URL allow-list check. Input format and checks: `reconciled::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reconciled::fuzz::paypal_cert_url(data);
});
