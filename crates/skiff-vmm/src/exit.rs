//! Why a VM stopped, and the one channel through which vCPUs, devices and signal handlers
//! report it. The first report wins; the VMM then shuts down.

use std::sync::mpsc;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off through ACPI.
    PowerOff,
    /// The guest asked for a reset (reboot) through ACPI or the i8042.
    Reset,
    /// The guest kernel panicked (reported through pvpanic).
    Panic,
    /// A vCPU triple-faulted: the guest crashed without a word.
    TripleFault { vcpu: u32 },
    /// KVM could not continue running a vCPU.
    KvmInternalError { vcpu: u32, suberror: u32 },
    /// The hardware refused to enter the guest.
    FailEntry { vcpu: u32, reason: u64 },
    /// A vCPU hit an error in the VMM.
    VcpuError { vcpu: u32, error: String },
    /// The VMM received a termination signal.
    Signal(i32),
    /// The user quit from the console escape.
    UserQuit,
    /// Stopped through the control socket.
    Stopped,
}

/// Exit status of `skiff run` for a guest that panicked.
pub const EXIT_GUEST_PANIC: i32 = 3;
/// Exit status for a guest that crashed some other way (triple fault, KVM error).
pub const EXIT_GUEST_CRASH: i32 = 4;
/// Exit status for a guest that asked to reboot (Skiff stops; the daemon may restart it).
pub const EXIT_GUEST_RESET: i32 = 5;

impl VmExit {
    /// The process exit status that reports this exit.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff | VmExit::UserQuit | VmExit::Stopped => 0,
            VmExit::Signal(_) => 0,
            VmExit::Panic => EXIT_GUEST_PANIC,
            VmExit::Reset => EXIT_GUEST_RESET,
            VmExit::TripleFault { .. }
            | VmExit::KvmInternalError { .. }
            | VmExit::FailEntry { .. }
            | VmExit::VcpuError { .. } => EXIT_GUEST_CRASH,
        }
    }

    /// One line for the user, when this exit deserves one.
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            VmExit::PowerOff => return None,
            VmExit::UserQuit => "console: quit".to_string(),
            VmExit::Stopped => "stopped through the control socket".to_string(),
            VmExit::Signal(sig) => format!("stopped by signal {sig}"),
            VmExit::Panic => "guest kernel panicked".to_string(),
            VmExit::Reset => "guest requested a reboot; the VM has stopped".to_string(),
            VmExit::TripleFault { vcpu } => {
                format!("guest crashed: triple fault on vCPU {vcpu}")
            }
            VmExit::KvmInternalError { vcpu, suberror } => {
                format!("guest crashed: KVM internal error (suberror {suberror}) on vCPU {vcpu}")
            }
            VmExit::FailEntry { vcpu, reason } => {
                format!("guest crashed: hardware entry failure {reason:#x} on vCPU {vcpu}")
            }
            VmExit::VcpuError { vcpu, error } => format!("vCPU {vcpu} failed: {error}"),
        })
    }
}

/// Where exits are reported. Cheap to clone; reports after the first are ignored by the
/// receiver.
#[derive(Clone, Debug)]
pub struct ExitSender(mpsc::Sender<VmExit>);

impl ExitSender {
    pub fn channel() -> (ExitSender, mpsc::Receiver<VmExit>) {
        let (tx, rx) = mpsc::channel();
        (ExitSender(tx), rx)
    }

    pub fn send(&self, exit: VmExit) {
        // The receiver is gone only while the process is exiting anyway.
        let _ = self.0.send(exit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_is_success_and_crashes_are_not() {
        assert_eq!(VmExit::PowerOff.exit_code(), 0);
        assert_eq!(VmExit::PowerOff.describe(), None);
        assert_eq!(VmExit::Panic.exit_code(), EXIT_GUEST_PANIC);
        let fault = VmExit::TripleFault { vcpu: 1 };
        assert_eq!(fault.exit_code(), EXIT_GUEST_CRASH);
        assert!(fault.describe().is_some_and(|d| d.contains("triple fault")));
    }
}
