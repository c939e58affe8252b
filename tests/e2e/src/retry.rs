//! Retries stay visible: a test that retries something the emulated host broke says so on
//! the test process's own stderr, which libtest does not capture, so the line reaches the
//! suite's output (and xtask's count of retries) even when the test then passes.

use std::io::Write as _;

/// The marker at the start of every retry line; `cargo xtask test` counts these lines.
pub const RETRY_MARKER: &str = "SKIFF-E2E-RETRY:";

/// Prints `SKIFF-E2E-RETRY: <test>: <why>` past libtest's output capture. The test's name
/// is its thread's (libtest names each test's thread after the test).
pub fn announce(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    // Straight to the file descriptor: `eprintln!` would be captured with the test's
    // output and shown only if the test failed.
    let _ = writeln!(std::io::stderr().lock(), "{RETRY_MARKER} {test}: {why}");
}
