//! Each device runs on its own worker thread, woken through epoll by its queue
//! notification eventfds (which KVM signals directly through ioeventfd), so the vCPU
//! threads never process queues and a slow disk does not hold up other devices.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use skiff_pci::msix::lock;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::VirtioDevice;

/// Stack of a device worker: queue processing is shallow; block I/O buffers live on the heap.
const WORKER_STACK: usize = 256 * 1024;

/// Tokens of backend file descriptors start here (queue notifications are 0..queues).
const BACKEND_TOKEN: usize = 1 << 16;

/// Starts a named thread with a stack size running a body. The VMM's confines the thread
/// (seccomp) before the body runs; [`plain_thread`] does nothing more than start it.
pub type SpawnThread<'a> =
    &'a dyn Fn(String, usize, Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>;

/// A [`SpawnThread`] without confinement (tests, fuzzing).
pub fn plain_thread(
    name: String,
    stack: usize,
    body: Box<dyn FnOnce() + Send>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name)
        .stack_size(stack)
        .spawn(body)
}

/// A running worker; dropping the handle does not stop it, [`Worker::stop`] does.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread (through `spawn`) that calls `process_queue(i)` whenever `notify[i]`
    /// fires.
    pub fn spawn(
        name: &str,
        device: Arc<Mutex<dyn VirtioDevice>>,
        notify: Vec<EventFd>,
        spawn: SpawnThread<'_>,
    ) -> io::Result<Worker> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (i, event) in notify.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let backend = lock(&device).backend_fds();
        for (i, fd) in backend.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    (BACKEND_TOKEN + i) as u64,
                ),
            )?;
        }
        let stop_token = notify.len() as u64;
        let pause = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_token),
        )?;
        let thread = spawn(
            name.chars().take(15).collect(),
            // Below 2 MiB so that transparent huge pages cannot back the stack.
            WORKER_STACK,
            Box::new(move || run(epoll, pause, device, notify, stop_token)),
        )?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long (ms) a worker leaves a device alone when one of its queues has more work than a
/// call takes (a guest flooding it, and kicking it without pause): the device's lock is free
/// for others meanwhile. Waited on an empty epoll set: epoll_wait is in every worker's
/// seccomp filter, a sleep is not.
const UNFINISHED_PAUSE_MS: i32 = 1;

fn run(
    epoll: Epoll,
    pause: Epoll,
    device: Arc<Mutex<dyn VirtioDevice>>,
    notify: Vec<EventFd>,
    stop: u64,
) {
    let mut events = vec![EpollEvent::default(); notify.len() + 8];
    let mut unfinished = Vec::new();
    loop {
        let timeout = if unfinished.is_empty() {
            -1
        } else {
            let _ = pause.wait(UNFINISHED_PAUSE_MS, &mut events);
            0
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("device worker: epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            if token == stop {
                return;
            }
            let index = token as usize;
            if let Some(backend) = index.checked_sub(BACKEND_TOKEN) {
                lock(&device).process_backend(backend);
            } else if let Some(fd) = notify.get(index) {
                // Non-blocking: a spurious wake-up reads EAGAIN, which is fine.
                let _ = fd.read();
                lock(&device).process_queue(index);
            }
        }
        let mut device = lock(&device);
        for index in std::mem::take(&mut unfinished) {
            device.process_queue(index);
        }
        unfinished = device.unfinished_queues();
    }
}
