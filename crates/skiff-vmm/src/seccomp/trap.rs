//! The SIGSYS handler: a filtered thread made a call outside its list. It writes one line
//! naming the thread and the call, then ends the process. Everything here is
//! async-signal-safe: the thread's name and role sit in thread-local cells set when it
//! was confined, the message is formatted into a buffer on the stack (core::fmt does not
//! allocate), and the only calls are `write` and `exit_group`, which every filter allows.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;

use super::names::SYSCALL_NAMES;

/// Exit status of `skiff run` after a seccomp violation.
pub const EXIT_SECCOMP: i32 = 6;

/// `si_code` of a SIGSYS raised by seccomp (SYS_SECCOMP in asm-generic/siginfo.h).
const SYS_SECCOMP: i32 = 1;

/// Thread names are at most 15 bytes (TASK_COMM_LEN less the NUL).
const NAME_MAX: usize = 15;

thread_local! {
    static ROLE: Cell<&'static str> = const { Cell::new("") };
    static NAME: Cell<([u8; NAME_MAX], usize)> = const { Cell::new(([0; NAME_MAX], 0)) };
}

/// The head of `siginfo_t` for SIGSYS on x86_64 (`_sigsys` in asm-generic/siginfo.h):
/// libc exposes no accessor for `si_syscall`.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    _call_addr: *mut libc::c_void,
    syscall: i32,
    _arch: u32,
}

/// Records the calling thread's role and name for the handler. Called before its filter
/// is applied, while allocation is still fine.
pub(super) fn remember_thread(role: &'static str) {
    ROLE.with(|r| r.set(role));
    let mut name = [0u8; NAME_MAX];
    let current = std::thread::current();
    let bytes = current.name().unwrap_or("").as_bytes();
    let len = bytes.len().min(NAME_MAX);
    name[..len].copy_from_slice(&bytes[..len]);
    NAME.with(|n| n.set((name, len)));
}

pub(super) fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler of the matching signature and an
    // empty mask is well-formed; the handler is async-signal-safe (see the module comment).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; for SIGSYS its
    // union holds `_sigsys`, laid out as `SigsysInfo`.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let syscall = if info.code == SYS_SECCOMP {
        Some(info.syscall)
    } else {
        None
    };
    let (name, len) = NAME.with(Cell::get);
    let thread = std::str::from_utf8(&name[..len]).unwrap_or("?");
    let role = ROLE.with(Cell::get);
    let mut line = Line::default();
    describe(&mut line, thread, role, syscall);
    let bytes = line.as_bytes();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(EXIT_SECCOMP);
    }
}

/// The line the handler prints, e.g. `skiff: seccomp: thread vcpu0 (vcpu filter) made a
/// forbidden system call: getppid (110); the VM has stopped`.
fn describe(out: &mut Line, thread: &str, role: &str, syscall: Option<i32>) {
    let name = syscall
        .and_then(|nr| usize::try_from(nr).ok())
        .and_then(|nr| SYSCALL_NAMES.get(nr))
        .copied()
        .filter(|n| !n.is_empty())
        .unwrap_or("unknown");
    // A full buffer only truncates the line.
    let _ = write!(
        out,
        "skiff: seccomp: thread {thread} ({role} filter) made a forbidden system call: {name}"
    );
    let _ = match syscall {
        Some(nr) => write!(out, " ({nr})"),
        None => Ok(()),
    };
    let _ = writeln!(out, "; the VM has stopped");
}

/// A fixed buffer that `write!` fills without allocating; what does not fit is dropped.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

/// The test hook's call: `getppid` is harmless and in no filter.
pub(super) fn call_forbidden_syscall() {
    // SAFETY: getppid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(thread: &str, role: &str, syscall: Option<i32>) -> String {
        let mut out = Line::default();
        describe(&mut out, thread, role, syscall);
        String::from_utf8(out.as_bytes().to_vec()).expect("utf-8")
    }

    #[test]
    fn the_line_names_thread_role_and_call() {
        assert_eq!(
            line("vcpu0", "vcpu", Some(libc::SYS_getppid as i32)),
            "skiff: seccomp: thread vcpu0 (vcpu filter) made a forbidden system call: \
             getppid (110); the VM has stopped\n"
        );
        assert!(line("control", "control", Some(2)).contains(": open (2);"));
    }

    #[test]
    fn unknown_numbers_and_long_lines_do_not_fail() {
        assert!(line("x", "main", Some(9999)).contains("unknown (9999)"));
        assert!(line("x", "main", Some(-1)).contains("unknown (-1)"));
        assert!(line("x", "main", None).contains("unknown;"));
        let long = "t".repeat(400);
        assert_eq!(line(&long, "main", Some(1)).len(), 256);
    }

    #[test]
    fn the_name_table_matches_libc() {
        assert_eq!(SYSCALL_NAMES[libc::SYS_read as usize], "read");
        assert_eq!(SYSCALL_NAMES[libc::SYS_ioctl as usize], "ioctl");
        assert_eq!(SYSCALL_NAMES[libc::SYS_execve as usize], "execve");
        assert_eq!(SYSCALL_NAMES[libc::SYS_seccomp as usize], "seccomp");
    }
}
