//! Waiting for SIGTERM/SIGINT or a timeout, without signal handlers: the signals are blocked
//! and collected with `sigtimedwait`.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Why the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The requested time passed.
    Timeout,
    /// SIGTERM or SIGINT arrived.
    Signal,
}

impl Released {
    /// Value printed as `released=...`.
    pub fn as_str(self) -> &'static str {
        match self {
            Released::Timeout => "timeout",
            Released::Signal => "signal",
        }
    }
}

/// The set {SIGTERM, SIGINT}.
pub struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    /// Block SIGTERM and SIGINT in the calling thread (call before spawning threads) so they
    /// stay pending until [`StopSignals::wait`] collects them.
    pub fn block() -> Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable sigset_t; the signal numbers are valid.
        let rc = unsafe {
            libc::sigemptyset(&mut set)
                | libc::sigaddset(&mut set, libc::SIGTERM)
                | libc::sigaddset(&mut set, libc::SIGINT)
        };
        if rc != 0 {
            return Err(Error::runtime("build signal set failed"));
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(Error::runtime(format!(
                "block SIGTERM/SIGINT: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(StopSignals { set })
    }

    /// Wait until a stop signal arrives or `limit` (if any) has passed.
    pub fn wait(&self, limit: Option<Duration>) -> Result<Released> {
        let deadline = limit.map(|d| Instant::now() + d);
        loop {
            let rc = match deadline {
                None => {
                    // SAFETY: `self.set` is an initialised sigset_t; info pointer may be null.
                    unsafe { libc::sigwaitinfo(&self.set, std::ptr::null_mut()) }
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Released::Timeout);
                    }
                    let ts = libc::timespec {
                        tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    };
                    // SAFETY: `self.set` and `ts` are initialised and outlive the call.
                    unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) }
                }
            };
            if rc > 0 {
                return Ok(Released::Signal);
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(Released::Timeout),
                _ => return Err(Error::runtime(format!("wait for signals: {err}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_timeout() {
        // Runs in a test thread: blocking affects only this thread.
        let s = StopSignals::block();
        assert!(s.is_ok());
        if let Ok(s) = s {
            let t = Instant::now();
            assert_eq!(
                s.wait(Some(Duration::from_millis(20))).ok(),
                Some(Released::Timeout)
            );
            assert!(t.elapsed() >= Duration::from_millis(20));
            assert_eq!(s.wait(Some(Duration::ZERO)).ok(), Some(Released::Timeout));
        }
    }

    #[test]
    fn names() {
        assert_eq!(Released::Signal.as_str(), "signal");
        assert_eq!(Released::Timeout.as_str(), "timeout");
    }
}
