//! Retries stay visible: a test that retries something the emulated host broke says so on
//! the test process's own stderr, which libtest does not capture, so the line reaches the
//! suite's output (and xtask's count of retries) even when the test then passes. A test's
//! panic message goes there too, at once: libtest prints failures only at the end of the
//! run, which an emulated host that crashes later never reaches.

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

/// The marker before a panic's message on the test process's own stderr.
pub const PANIC_MARKER: &str = "SKIFF-E2E-PANIC:";

thread_local! {
    /// Set while a test catches a panic it expects: not a failure to report.
    static EXPECTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching the panic the test expects of it without reporting it as a failure.
pub fn catch_expected_panic<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> std::thread::Result<R> {
    EXPECTED.with(|e| e.set(true));
    let result = std::panic::catch_unwind(f);
    EXPECTED.with(|e| e.set(false));
    result
}

/// Installs (once) a panic hook that writes `SKIFF-E2E-PANIC: <test>: <message> at <file:line>`
/// past libtest's capture, then runs the default hook (whose output libtest keeps).
pub fn report_panics_at_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if EXPECTED.with(std::cell::Cell::get) {
                return default(info);
            }
            let thread = std::thread::current();
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            // The first lines: enough to say why; the whole of it comes at the end.
            let short: Vec<&str> = message.lines().take(12).collect();
            let at = info
                .location()
                .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
            let _ = writeln!(
                std::io::stderr().lock(),
                "{PANIC_MARKER} {}: {}{at}",
                thread.name().unwrap_or("?"),
                short.join("\n    ")
            );
            default(info);
        }));
    });
}
