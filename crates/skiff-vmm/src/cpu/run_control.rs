//! Pausing and resuming vCPUs. A pause sets the requested state, then kicks every vCPU
//! thread out of KVM_RUN with a signal whose handler sets that vCPU's `immediate_exit`
//! (so a kick that lands just before KVM_RUN is not lost); each vCPU then parks until
//! resumed.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;

use crate::devices::iobus::lock;

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// This thread's vCPU `kvm_run`, for the kick handler. Null on non-vCPU threads.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_signal: libc::c_int) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by
            // `register_vcpu_thread` and valid while the vCPU fd lives; a volatile byte
            // store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// Installs the kick handler (process-wide). Without SA_RESTART: KVM_RUN must return EINTR.
pub fn install_kick_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and empty mask is well-formed; the
    // handler only touches thread-local state.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Tells the kick handler where this vCPU thread's `kvm_run` is.
pub fn register_vcpu_thread(run: *mut kvm_run) {
    KVM_RUN.with(|cell| cell.set(run));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    Running,
    Paused,
}

struct State {
    requested: Requested,
    parked: usize,
}

/// Shared by the vCPU threads and whoever pauses them.
pub struct RunControl {
    /// Fast path for the vCPU loop: checked on every exit without taking the lock.
    pause_requested: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("vCPUs did not stop within {0:?}; the VM runs on")]
    Timeout(Duration),
    #[error("cannot kick vCPU thread: {0}; the VM runs on")]
    Kick(io::Error),
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            pause_requested: AtomicBool::new(false),
            state: Mutex::new(State {
                requested: Requested::Running,
                parked: 0,
            }),
            changed: Condvar::new(),
        }
    }
}

impl RunControl {
    pub fn requested(&self) -> Requested {
        lock(&self.state).requested
    }

    /// Called by a vCPU thread between runs: blocks while a pause is requested.
    pub fn park_if_paused(&self) {
        if !self.pause_requested.load(Ordering::Acquire) {
            return;
        }
        let mut state = lock(&self.state);
        if state.requested == Requested::Running {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.requested == Requested::Paused {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.parked -= 1;
        self.changed.notify_all();
    }

    /// Requests a pause, kicks each thread with `kick`, and waits until `vcpus` have parked.
    /// On failure the request is withdrawn: the vCPUs run on, as the error says, rather than
    /// parking later with nobody left to resume them (under load a vCPU can take longer
    /// than the timeout to leave KVM_RUN; the guest then froze for good).
    pub fn pause(
        &self,
        vcpus: usize,
        kick: impl Fn() -> io::Result<()>,
        timeout: Duration,
    ) -> Result<(), PauseError> {
        lock(&self.state).requested = Requested::Paused;
        self.pause_requested.store(true, Ordering::Release);
        if let Err(e) = kick() {
            self.resume();
            return Err(PauseError::Kick(e));
        }
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while state.parked < vcpus {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(state);
                self.resume();
                return Err(PauseError::Timeout(timeout));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        Ok(())
    }

    pub fn resume(&self) {
        let mut state = lock(&self.state);
        state.requested = Requested::Running;
        self.pause_requested.store(false, Ordering::Release);
        drop(state);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_waits_for_every_vcpu_and_resume_releases_them() {
        let control = Arc::new(RunControl::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (control, stop) = (control.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        control.park_if_paused();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        control
            .pause(3, || Ok(()), Duration::from_secs(5))
            .expect("all three park");
        assert_eq!(control.requested(), Requested::Paused);
        stop.store(true, Ordering::SeqCst);
        control.resume();
        for t in threads {
            t.join().expect("thread ends after resume");
        }
    }

    #[test]
    fn pause_times_out_when_a_vcpu_never_parks() {
        let control = RunControl::default();
        let err = control
            .pause(1, || Ok(()), Duration::from_millis(50))
            .expect_err("nobody parks");
        assert!(matches!(err, PauseError::Timeout(_)));
    }

    #[test]
    fn a_failed_pause_leaves_the_vcpus_running() {
        let control = RunControl::default();
        control
            .pause(1, || Ok(()), Duration::from_millis(10))
            .expect_err("nobody parks");
        assert_eq!(control.requested(), Requested::Running);
        // A vCPU that gets out of KVM_RUN only now does not park.
        control.park_if_paused();

        let err = control
            .pause(
                1,
                || Err(io::Error::other("no such thread")),
                Duration::from_secs(5),
            )
            .expect_err("the kick fails");
        assert!(matches!(err, PauseError::Kick(_)));
        assert_eq!(control.requested(), Requested::Running);
        control.park_if_paused();
    }
}
