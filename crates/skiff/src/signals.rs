//! Termination signals become a VM exit: a dedicated thread waits for them, so no handler
//! runs inside a vCPU thread. Call `block_termination_signals` before starting any thread
//! so that every thread inherits the mask.

use std::io;
use std::thread;

use skiff_vmm::{ExitSender, VmExit};

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

pub fn block_termination_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: changes only this thread's mask, with a fully initialised set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

pub fn forward_to(exits: ExitSender) -> io::Result<()> {
    thread::Builder::new()
        .name("signals".into())
        .stack_size(skiff_vmm::stacks::SERVICE)
        .spawn(move || loop {
            let set = signal_set();
            let mut sig: libc::c_int = 0;
            // SAFETY: the set is initialised and `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                exits.send(VmExit::Signal(sig));
            }
        })?;
    Ok(())
}
