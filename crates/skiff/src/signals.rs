//! Termination signals become a VM exit: a dedicated thread waits for them, so no handler
//! runs inside a vCPU thread. Call `block_termination_signals` before starting any thread
//! so that every thread inherits the mask.

use std::io;

use skiff_vmm::{seccomp, ExitSender, VmExit};

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; the signal numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Never runs (the signals stay blocked and the signal thread takes them), but a handler
/// must exist: a jailed VMM is the first process of its PID namespace, and the kernel
/// drops signals from outside that such a process has left at their default.
extern "C" fn unreachable_handler(_signal: libc::c_int) {}

pub fn block_termination_signals() -> io::Result<()> {
    let set = signal_set();
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well-formed;
        // the handler does nothing.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = unreachable_handler as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: changes only this thread's mask, with a fully initialised set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A file the VMM writes (its console log on stdout) may reach a size limit (a jailed VMM
/// has RLIMIT_FSIZE): the write should then fail with EFBIG and be dropped, as a full disk
/// is, rather than SIGXFSZ killing the VMM — which would let a guest that prints without
/// end kill its own VM.
pub fn ignore_file_size_signal() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler runs.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn forward_to(exits: ExitSender) -> io::Result<()> {
    seccomp::spawn(
        "signals".into(),
        seccomp::Role::Signals,
        skiff_vmm::stacks::SERVICE,
        move || loop {
            let set = signal_set();
            let mut sig: libc::c_int = 0;
            // SAFETY: the set is initialised and `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                exits.send(VmExit::Signal(sig));
            }
        },
    )?;
    Ok(())
}
