//! The guest's serial console on this process's stdin/stdout. On a terminal, stdin goes to
//! raw mode (every key reaches the guest) and Ctrl-A x quits; Ctrl-A Ctrl-A sends Ctrl-A.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use skiff_vmm::devices::iobus::lock;
use skiff_vmm::devices::serial::SerialDevice;
use skiff_vmm::devices::Shared;
use skiff_vmm::seccomp;
use skiff_vmm::{ExitSender, VmExit};

const ESCAPE: u8 = 0x01; // Ctrl-A
const QUIT: u8 = b'x';

/// The terminal settings to restore at exit, when stdin is a terminal.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// An unbuffered handle on stdout for the guest's output: a prompt without a newline must
/// show at once.
pub fn output() -> io::Result<File> {
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts the terminal in raw mode; `restore_terminal` undoes it.
pub fn enter_raw_mode() -> io::Result<()> {
    // SAFETY: tcgetattr fills the zeroed struct we own.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } != 0 {
        return Err(io::Error::last_os_error());
    }
    *lock(&SAVED_TERMIOS) = Some(termios);
    let mut raw = termios;
    // SAFETY: cfmakeraw edits the struct we own.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so that the VMM's own messages still start on column 0.
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    // SAFETY: valid descriptor and fully initialised settings.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn restore_terminal() {
    if let Some(termios) = lock(&SAVED_TERMIOS).take() {
        // SAFETY: restores settings read earlier from the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) };
    }
}

/// Feeds stdin to the guest's UART until stdin closes.
pub fn forward_input(serial: Shared<SerialDevice>, exits: ExitSender, escapes: bool) {
    let spawned = seccomp::spawn(
        "console".into(),
        seccomp::Role::Console,
        skiff_vmm::stacks::SERVICE,
        move || {
            let mut stdin = io::stdin().lock();
            let mut filter = EscapeFilter::default();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let (bytes, quit) = if escapes {
                    filter.filter(&buf[..n])
                } else {
                    (buf[..n].to_vec(), false)
                };
                feed(&serial, &bytes);
                if quit {
                    exits.send(VmExit::UserQuit);
                    return;
                }
            }
        },
    );
    if let Err(e) = spawned {
        log::warn!("console input disabled: cannot start its thread: {e}");
    }
}

/// Hands bytes to the UART as its FIFO frees up.
fn feed(serial: &Shared<SerialDevice>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = lock(serial).enqueue_input(bytes);
        bytes = &bytes[n..];
        if n == 0 {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Recognises Ctrl-A x (quit) and Ctrl-A Ctrl-A (a literal Ctrl-A) across reads.
#[derive(Default)]
struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    QUIT => return (out, true),
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend([ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(
            f.filter(&[ESCAPE, ESCAPE, b'a']),
            (vec![ESCAPE, b'a'], false)
        );
        assert_eq!(f.filter(&[ESCAPE, b'b']), (vec![ESCAPE, b'b'], false));
        assert_eq!(f.filter(&[b'q', ESCAPE]), (vec![b'q'], false));
        assert_eq!(f.filter(b"x"), (vec![], true), "escape split across reads");
    }
}
