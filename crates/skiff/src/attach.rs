//! `skiff vm console NAME`: the daemon's VMs have their serial console on a FIFO (input) and
//! a log file (output), so attaching is following the log and writing keys to the FIFO.
//! Ctrl-] detaches; the VM keeps running.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use skiff_api::model::VmInfo;

use crate::console;

const DETACH: u8 = 0x1d; // Ctrl-]
/// Output shown on attach, so the prompt and recent lines are on screen.
const BACKLOG: u64 = 2048;
const FOLLOW_POLL: Duration = Duration::from_millis(50);

pub fn attach(vm: &VmInfo) -> Result<()> {
    let mut input = OpenOptions::new()
        .write(true)
        .open(&vm.console.input)
        .with_context(|| format!("cannot open the console input {}", vm.console.input))?;
    let mut log = File::open(&vm.console.log)
        .with_context(|| format!("cannot open the console log {}", vm.console.log))?;
    let len = log.metadata()?.len();
    log.seek(SeekFrom::Start(len.saturating_sub(BACKLOG)))?;

    let interactive = console::stdin_is_terminal();
    if interactive {
        console::enter_raw_mode().context("cannot put the terminal in raw mode")?;
    }
    eprint!("skiff: attached to {}; Ctrl-] detaches\r\n", vm.name);
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let done = done.clone();
        thread::spawn(move || follow(log, &done))
    };
    let result = forward_keys(&mut input);
    done.store(true, Ordering::Relaxed);
    let _ = follower.join();
    console::restore_terminal();
    eprintln!("\nskiff: detached");
    result
}

/// Copies what the guest writes to stdout until `done`.
fn follow(mut log: File, done: &AtomicBool) {
    let mut stdout = io::stdout();
    let mut buf = [0u8; 4096];
    while !done.load(Ordering::Relaxed) {
        match log.read(&mut buf) {
            Ok(0) => {
                // The daemon rotated the log (it truncates it in place): start over.
                if let (Ok(meta), Ok(at)) = (log.metadata(), log.stream_position()) {
                    if meta.len() < at {
                        let _ = log.seek(SeekFrom::Start(0));
                        continue;
                    }
                }
                thread::sleep(FOLLOW_POLL)
            }
            Ok(n) => {
                let _ = stdout.write_all(&buf[..n]);
                let _ = stdout.flush();
            }
            Err(_) => return,
        }
    }
}

/// Sends stdin to the console until Ctrl-] or the end of stdin.
fn forward_keys(input: &mut File) -> Result<()> {
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 256];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let (keys, detach) = match buf[..n].iter().position(|&b| b == DETACH) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        input.write_all(keys).context("the console input closed")?;
        if detach {
            return Ok(());
        }
    }
}
