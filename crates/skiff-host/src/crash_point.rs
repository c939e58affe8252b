//! Injected crash points, for tests only: built with the `crash-points` feature (the `skiff`
//! crate's tests enable it; release builds do not have it), `SKIFF_CRASH_POINT=NAME` makes
//! the daemon abort at the point `NAME`, as if killed there. The points:
//!
//! - `after-spawn`: a VMM has been started, its PID not yet saved (`service::launch`).

/// Aborts the process if the test asked to crash at `point`; otherwise nothing.
#[cfg(feature = "crash-points")]
pub fn hit(point: &str) {
    if std::env::var("SKIFF_CRASH_POINT").is_ok_and(|p| p == point) {
        log::error!("crash point {point}: aborting, as the test asked (SKIFF_CRASH_POINT)");
        std::process::abort();
    }
}

/// Without the `crash-points` feature there are none.
#[cfg(not(feature = "crash-points"))]
pub fn hit(_point: &str) {}
