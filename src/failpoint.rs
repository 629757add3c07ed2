//! Test-only crash points for the crash tests.

/// A test-only crash point: with the `failpoints` feature, aborts the process when
/// `RECONCILED_FAILPOINT` names this point. Compiled to nothing otherwise.
#[inline]
pub fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("RECONCILED_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
