//! Worldpay XML: the safe streaming parse (DOCTYPE, entities, limits), merchant code, mapping.
//! Input format and checks: `reconciled::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reconciled::fuzz::worldpay_xml(data);
});
