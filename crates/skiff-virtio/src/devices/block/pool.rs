//! The I/O threads of one disk: requests run there, several at once, while the device's
//! worker keeps taking new ones from the queue. Each finished request is put on a list
//! and announced on an eventfd, which the worker waits on with its queue notifications
//! (`VirtioDevice::backend_fds`); the worker alone touches the used ring.
//!
//! Threads, not io_uring: the disk's work includes `fallocate` and the block ioctls, and
//! buffered reads that hit the page cache then run on several host CPUs at once.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::worker::SpawnThread;

/// Stack of an I/O thread: a request's buffers live on the heap.
const IO_STACK: usize = 128 * 1024;

/// A request that has run: its chain's head and the bytes it wrote into guest buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub head: u16,
    pub len: u32,
}

pub type Job = Box<dyn FnOnce() -> Completion + Send>;

struct Done {
    list: Mutex<Vec<Completion>>,
    ready: EventFd,
    /// Jobs submitted and not yet finished.
    running: Mutex<usize>,
    idle: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Done {
    fn finish(&self, completion: Completion) {
        lock(&self.list).push(completion);
        if let Err(e) = self.ready.write(1) {
            log::error!("virtio-blk: cannot announce a completion: {e}");
        }
        let mut running = lock(&self.running);
        *running = running.saturating_sub(1);
        if *running == 0 {
            self.idle.notify_all();
        }
    }
}

/// A fixed set of threads; the queue depth of the disk is their number.
pub struct IoPool {
    jobs: mpsc::Sender<Job>,
    done: Arc<Done>,
    depth: usize,
}

impl IoPool {
    /// Starts `threads` threads (at least one) through `spawn`.
    pub fn spawn(name: &str, threads: usize, spawn: SpawnThread<'_>) -> io::Result<IoPool> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let done = Arc::new(Done {
            list: Mutex::new(Vec::new()),
            ready: EventFd::new(EFD_NONBLOCK)?,
            running: Mutex::new(0),
            idle: Condvar::new(),
        });
        let depth = threads.max(1);
        for i in 0..depth {
            let receiver = receiver.clone();
            let done = done.clone();
            let thread_name: String = format!("{name}-io{i}").chars().take(15).collect();
            spawn(
                thread_name,
                IO_STACK,
                Box::new(move || loop {
                    let job = lock(&receiver).recv();
                    match job {
                        Ok(job) => done.finish(job()),
                        // The pool was dropped: the VM is going away.
                        Err(_) => return,
                    }
                }),
            )?;
        }
        Ok(IoPool { jobs, done, depth })
    }

    /// Requests that may run at once.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The descriptor that becomes readable when requests finished.
    pub fn ready_fd(&self) -> RawFd {
        self.done.ready.as_raw_fd()
    }

    pub fn submit(&self, job: Job) {
        *lock(&self.done.running) += 1;
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            // No thread is left to take it (cannot happen while the pool lives): run it here.
            self.done.finish(job());
        }
    }

    /// The requests finished since the last call.
    pub fn take_done(&self) -> Vec<Completion> {
        // Non-blocking: nothing to read is fine.
        let _ = self.done.ready.read();
        std::mem::take(&mut *lock(&self.done.list))
    }

    /// Waits until no request runs (a reset must not let one write guest memory later).
    pub fn wait_idle(&self) {
        let mut running = lock(&self.done.running);
        while *running > 0 {
            running = self
                .done
                .idle
                .wait(running)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::plain_thread;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn requests_run_at_once_up_to_the_depth() {
        let pool = IoPool::spawn("test", 4, &plain_thread).expect("pool");
        assert_eq!(pool.depth(), 4);
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        for head in 0..8u16 {
            let (now, most) = (now.clone(), most.clone());
            pool.submit(Box::new(move || {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                now.fetch_sub(1, Ordering::SeqCst);
                Completion { head, len: 1 }
            }));
        }
        pool.wait_idle();
        let mut heads: Vec<u16> = pool.take_done().iter().map(|c| c.head).collect();
        heads.sort_unstable();
        assert_eq!(heads, (0..8).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((2..=4).contains(&most), "{most} ran at once");
        assert!(pool.take_done().is_empty());
    }
}
