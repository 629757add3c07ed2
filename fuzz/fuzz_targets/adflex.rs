//! Adflex: JSON with the default field paths, signed and unsigned endpoints, mapping. Input format
//! and checks: `reconciled::fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reconciled::fuzz::adflex(data);
});
