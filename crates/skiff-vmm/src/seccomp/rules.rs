//! Which system calls each thread role may make: one function per role, each list
//! commented with the code that needs it. To extend a role, add the call to its function
//! (with the arguments it uses, where a call can do very different things).
//!
//! The lists were derived from the code and checked by running every e2e test with
//! `--seccomp=log` and reading the kernel's log of allowed-but-unlisted calls.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::ioctls;
use super::{DeviceRole, Role};

type Result<T> = std::result::Result<T, BackendError>;

/// The BPF program of `role`: its calls are allowed, anything else gets `mismatch`.
pub(super) fn program(role: Role, mismatch: SeccompAction) -> Result<BpfProgram> {
    let mut rules = Rules::default();
    base(&mut rules)?;
    match role {
        Role::Main => main(&mut rules)?,
        Role::Vcpu => vcpu(&mut rules)?,
        Role::Device(device) => {
            worker(&mut rules);
            match device {
                DeviceRole::Block => block(&mut rules)?,
                // Their queues and back ends are eventfds and the tap: read and write, which
                // every worker has; the rng's getrandom and the balloon's discards
                // (madvise(MADV_DONTNEED)) are in the base list.
                DeviceRole::Rng | DeviceRole::Net | DeviceRole::Balloon | DeviceRole::Vsock => {}
            }
        }
        Role::BalloonStats => {}
        Role::Sampler => sampler(&mut rules)?,
        Role::Console => console(&mut rules),
        Role::Control => control(&mut rules)?,
        Role::Signals => signals(&mut rules),
    }
    SeccompFilter::new(rules.0, mismatch, SeccompAction::Allow, TargetArch::x86_64)?.try_into()
}

/// What any Rust thread does: lock, allocate, log to stderr, report through channels, die.
fn base(r: &mut Rules) -> Result<()> {
    use libc::*;
    // Mutexes, condition variables, channels.
    r.allow(SYS_futex).allow(SYS_sched_yield);
    // malloc: arenas and large blocks. Never executable memory.
    r.allow_masked(SYS_mmap, 2, PROT_EXEC as u64, 0)?;
    r.allow_masked(SYS_mprotect, 2, PROT_EXEC as u64, 0)?;
    r.allow(SYS_munmap).allow(SYS_mremap).allow(SYS_brk);
    // malloc trims with MADV_DONTNEED, which is also how guest pages go back to the host
    // (GuestRam::discard: the balloon, free page reporting).
    r.allow_args(SYS_madvise, 2, &[MADV_DONTNEED as u64])?;
    // Log lines to stderr, eventfd signals (interrupts, vhost kicks), closing descriptors.
    r.allow(SYS_write).allow(SYS_close);
    // Time: the vDSO falls back to the system call on some clock sources.
    r.allow(SYS_clock_gettime);
    // Signal returns (the vCPU kick, a restarted call); the SIGSYS handler's exit.
    r.allow(SYS_rt_sigreturn)
        .allow(SYS_restart_syscall)
        .allow(SYS_rt_sigprocmask)
        .allow(SYS_sigaltstack);
    r.allow(SYS_exit).allow(SYS_exit_group);
    // abort() after a panic: raise(SIGABRT) = tgkill(getpid(), gettid(), SIGABRT).
    r.allow(SYS_getpid).allow(SYS_gettid);
    r.allow_args(SYS_tgkill, 2, &[SIGABRT as u64])?;
    // A thread's first HashMap/HashSet seeds std's RandomState; virtio-rng's entropy.
    r.allow(SYS_getrandom);
    Ok(())
}

/// After start-up the main thread waits for the first exit report, puts the terminal back,
/// removes the control socket and ends the process.
fn main(r: &mut Rules) -> Result<()> {
    r.allow_all_of(
        libc::SYS_ioctl,
        &[(0, libc::STDIN_FILENO as u64), (1, libc::TCSETS)],
    )?;
    r.allow(libc::SYS_unlink);
    Ok(())
}

/// KVM_RUN and the exits it hands back: port and MMIO accesses reach the devices on this
/// thread, so the guest's writes to PCI configuration and virtio registers run here.
fn vcpu(r: &mut Rules) -> Result<()> {
    let mut requests = vec![
        ioctls::KVM_RUN(),
        // Reading the registers, to report where a guest that triple-faulted stopped.
        ioctls::KVM_GET_REGS(),
        ioctls::KVM_GET_SREGS(),
        // BAR programming moves queue notify addresses (ioeventfds) ...
        ioctls::KVM_IOEVENTFD(),
        // ... and MSI-X table writes change the GSI routes.
        ioctls::KVM_SET_GSI_ROUTING(),
        // virtio-net activation and reset: the tap's offloads follow the driver's features.
        libc::TUNSETOFFLOAD,
    ];
    // vhost-vsock activation and reset: memory table, rings, running state.
    requests.extend(ioctls::vhost_vsock_activation());
    r.allow_args(libc::SYS_ioctl, 1, &requests)?;
    // virtio-blk reset (the driver writes status 0) makes what was written durable; for a
    // qcow2 disk that writes imago's cached metadata tables first and syncs with fsync.
    r.allow(libc::SYS_fdatasync)
        .allow(libc::SYS_fsync)
        .allow(libc::SYS_pwrite64)
        .allow(libc::SYS_pwritev);
    // Device activation and reset drain eventfds and virtio-net's tap.
    r.allow(libc::SYS_read);
    Ok(())
}

/// Every device worker: epoll on queue notifications and back-end descriptors; reads
/// eventfds (writes are in the base list).
fn worker(r: &mut Rules) {
    r.allow(libc::SYS_epoll_wait)
        .allow(libc::SYS_epoll_pwait)
        .allow(libc::SYS_read);
}

/// virtio-blk on a raw image, a block device or a qcow2 image, on its worker and its I/O
/// threads: positioned reads and writes (vectored, straight between the disk and guest
/// memory; plain ones through cache=direct's bounce buffer and for written zeros), flush;
/// discard and write-zeroes (fallocate on files, BLKDISCARD and BLKZEROOUT on devices).
fn block(r: &mut Rules) -> Result<()> {
    r.allow(libc::SYS_pread64)
        .allow(libc::SYS_pwrite64)
        .allow(libc::SYS_preadv)
        .allow(libc::SYS_pwritev)
        .allow(libc::SYS_fdatasync)
        .allow(libc::SYS_fsync)
        // Discard and write-zeroes on files; qcow2 (imago) zeroing the rest of a newly
        // allocated cluster (punch hole, zero range).
        .allow(libc::SYS_fallocate);
    r.allow_args(
        libc::SYS_ioctl,
        1,
        &[ioctls::BLKDISCARD, ioctls::BLKZEROOUT],
    )?;
    Ok(())
}

/// stdin to the UART; sleeps while its FIFO is full.
fn console(r: &mut Rules) {
    r.allow(libc::SYS_read)
        .allow(libc::SYS_nanosleep)
        .allow(libc::SYS_clock_nanosleep);
}

/// sigwait(3) for SIGINT, SIGTERM and SIGHUP.
fn signals(r: &mut Rules) {
    r.allow(libc::SYS_rt_sigtimedwait);
}

/// Working-set sampling: each period, clear and write-protect the sampled pages' dirty
/// bits, then read which were written (its random generator is seeded before it starts);
/// once, turn dirty logging on.
fn sampler(r: &mut Rules) -> Result<()> {
    r.allow_args(
        libc::SYS_ioctl,
        1,
        &[
            ioctls::KVM_CLEAR_DIRTY_LOG(),
            ioctls::KVM_GET_DIRTY_LOG(),
            // Turning dirty logging on once the guest has booted (a memory slot flag).
            ioctls::KVM_SET_USER_MEMORY_REGION(),
        ],
    )?;
    Ok(())
}

/// The control socket: accept clients, read requests and write responses with timeouts,
/// read /proc/self/status, ksm_stat and meminfo and mincore for stats, kick vCPUs for a
/// pause, and the memory requests: sampling on/off (dirty logging is a memory slot flag),
/// reclaim (the hot pages from the dirty log; MADV_PAGEOUT or MADV_COLD), page sharing
/// (MADV_MERGEABLE or MADV_UNMERGEABLE).
fn control(r: &mut Rules) -> Result<()> {
    use libc::*;
    r.allow(SYS_accept4)
        .allow(SYS_read)
        .allow(SYS_recvfrom)
        .allow(SYS_sendto);
    r.allow_all_of(
        SYS_setsockopt,
        &[(1, SOL_SOCKET as u64), (2, SO_RCVTIMEO as u64)],
    )?;
    r.allow_all_of(
        SYS_setsockopt,
        &[(1, SOL_SOCKET as u64), (2, SO_SNDTIMEO as u64)],
    )?;
    // UnixStream::try_clone; std's debug builds check descriptors with F_GETFD.
    r.allow_args(SYS_fcntl, 1, &[F_DUPFD_CLOEXEC as u64, F_GETFD as u64])?;
    // /proc/self/status, read-only.
    r.allow_args(SYS_openat, 2, &[O_RDONLY as u64 | O_CLOEXEC as u64])?;
    r.allow(SYS_statx)
        .allow(SYS_fstat)
        .allow(SYS_newfstatat)
        .allow(SYS_lseek);
    // Resident guest pages.
    r.allow(SYS_mincore);
    // Pause: pthread_kill(vCPU, SIGRTMIN) = tgkill(getpid(), tid, SIGRTMIN).
    r.allow_args(SYS_tgkill, 2, &[SIGRTMIN() as u64])?;
    r.allow_args(
        SYS_ioctl,
        1,
        &[
            ioctls::KVM_SET_USER_MEMORY_REGION(),
            ioctls::KVM_GET_DIRTY_LOG(),
            ioctls::KVM_CLEAR_DIRTY_LOG(),
        ],
    )?;
    r.allow_args(
        SYS_madvise,
        2,
        &[
            MADV_PAGEOUT as u64,
            MADV_COLD as u64,
            MADV_MERGEABLE as u64,
            MADV_UNMERGEABLE as u64,
        ],
    )?;
    Ok(())
}

/// A filter's rules: for each call, the argument patterns that allow it (none: any).
#[derive(Default)]
struct Rules(BTreeMap<i64, Vec<SeccompRule>>);

impl Rules {
    /// Allows `nr` whatever its arguments.
    fn allow(&mut self, nr: i64) -> &mut Self {
        // An empty list matches unconditionally; a call allowed outright stays so.
        self.0.insert(nr, Vec::new());
        self
    }

    /// Allows `nr` when argument `arg` (compared as 32 bits, as the kernel reads ints and
    /// ioctl requests) is one of `values`.
    fn allow_args(&mut self, nr: i64, arg: u8, values: &[u64]) -> Result<&mut Self> {
        for &value in values {
            self.allow_all_of(nr, &[(arg, value)])?;
        }
        Ok(self)
    }

    /// Allows `nr` when every `(arg, value)` pair holds.
    fn allow_all_of(&mut self, nr: i64, pairs: &[(u8, u64)]) -> Result<&mut Self> {
        let conditions = pairs
            .iter()
            .map(|&(arg, value)| {
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            })
            .collect::<Result<Vec<_>>>()?;
        self.add(nr, SeccompRule::new(conditions)?);
        Ok(self)
    }

    /// Allows `nr` when the bits `mask` of argument `arg` equal `value`.
    fn allow_masked(&mut self, nr: i64, arg: u8, mask: u64, value: u64) -> Result<&mut Self> {
        let condition = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            value,
        )?;
        self.add(nr, SeccompRule::new(vec![condition])?);
        Ok(self)
    }

    fn add(&mut self, nr: i64, rule: SeccompRule) {
        match self.0.get_mut(&nr) {
            // Already allowed outright: a narrower rule would change nothing.
            Some(rules) if rules.is_empty() => {}
            Some(rules) => rules.push(rule),
            None => {
                self.0.insert(nr, vec![rule]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_compiles_in_every_mode() {
        for role in Role::ALL {
            for action in [SeccompAction::Trap, SeccompAction::Log] {
                let program = program(role, action).expect("filter compiles");
                assert!(!program.is_empty(), "{role:?}");
            }
        }
    }

    /// Runs `probe` in a thread confined to `role`, where unlisted calls fail with EPERM
    /// instead of trapping (so the test process survives).
    fn confined<T: Send + 'static>(role: Role, probe: fn() -> T) -> T {
        std::thread::spawn(move || {
            let program = program(role, SeccompAction::Errno(libc::EPERM as u32)).expect("build");
            seccompiler::apply_filter(&program).expect("apply");
            probe()
        })
        .join()
        .expect("probe thread")
    }

    fn errno_of(ret: i64) -> i32 {
        if ret == -1 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn a_vcpu_may_run_kvm_but_not_open_files_or_map_code() {
        let (kvm_run, tcgets, open, exec_map) = confined(Role::Vcpu, || {
            // SAFETY: calls on an invalid descriptor and a null path fail harmlessly; the
            // mapping, if the filter let it through, is unmapped below.
            unsafe {
                let kvm_run = errno_of(libc::ioctl(-1, ioctls::KVM_RUN()) as i64);
                let tcgets = errno_of(libc::ioctl(-1, libc::TCGETS) as i64);
                let open = errno_of(libc::syscall(libc::SYS_openat, -1, 0, 0));
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                let exec_map = if map == libc::MAP_FAILED {
                    errno_of(-1)
                } else {
                    libc::munmap(map, 4096);
                    0
                };
                (kvm_run, tcgets, open, exec_map)
            }
        });
        assert_eq!(kvm_run, libc::EBADF, "KVM_RUN reaches the kernel");
        assert_eq!(tcgets, libc::EPERM, "other ioctls are filtered");
        assert_eq!(open, libc::EPERM);
        assert_eq!(exec_map, libc::EPERM);
    }

    #[test]
    fn the_control_thread_may_open_read_only_only() {
        let (read_only, writable) = confined(Role::Control, || {
            let read_only = std::fs::File::open("/proc/self/status").is_ok();
            let writable = std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/comm")
                .map_err(|e| e.raw_os_error());
            (read_only, writable.err().flatten())
        });
        assert!(read_only);
        assert_eq!(writable, Some(libc::EPERM));
    }

    #[test]
    fn a_block_worker_may_discard_and_zero_but_no_other_ioctl() {
        let (fallocate, discard, zeroout, other) =
            confined(Role::Device(DeviceRole::Block), || {
                // SAFETY: calls on an invalid descriptor fail harmlessly with EBADF when the
                // filter lets them through; the range pointer is to a live array.
                unsafe {
                    let range = [0u64; 2];
                    (
                        errno_of(i64::from(libc::fallocate(-1, 0, 0, 4096))),
                        errno_of(libc::ioctl(-1, ioctls::BLKDISCARD, range.as_ptr()) as i64),
                        errno_of(libc::ioctl(-1, ioctls::BLKZEROOUT, range.as_ptr()) as i64),
                        errno_of(libc::ioctl(-1, libc::TCGETS) as i64),
                    )
                }
            });
        assert_eq!(
            (fallocate, discard, zeroout),
            (libc::EBADF, libc::EBADF, libc::EBADF)
        );
        assert_eq!(other, libc::EPERM);
    }

    #[test]
    fn allowing_outright_wins_over_argument_rules() {
        let mut r = Rules::default();
        r.allow_args(libc::SYS_ioctl, 1, &[1, 2]).expect("rule");
        assert_eq!(r.0[&libc::SYS_ioctl].len(), 2);
        r.allow(libc::SYS_ioctl);
        r.allow_args(libc::SYS_ioctl, 1, &[3]).expect("rule");
        assert!(r.0[&libc::SYS_ioctl].is_empty());
    }
}
