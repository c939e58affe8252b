//! Child processes that never outlive us: killed on drop, and by the kernel
//! (PR_SET_PDEATHSIG) if we die without unwinding.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use anyhow::{Context, Result};

use crate::cmd;

/// A running child; dropping it kills it.
pub struct Guarded {
    child: Child,
}

impl Guarded {
    /// Spawns `cmd`, arranging for SIGKILL if this thread's process dies first.
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        // SAFETY: the closure runs between fork and exec and only calls prctl and
        // getppid, both async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::describe(cmd)))?;
        Ok(Self { child })
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Kills the child (if still running) and reaps it.
    pub fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}
