//! `skiff run`: one VM in this process.

use std::io::Write as _;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use skiff_api::{ByteSize, MemorySpec, VmSpec};
use skiff_vmm::seccomp::{self, SeccompMode};
use skiff_vmm::{Vm, VmConfig};

use skiff_jail::Forked;

use crate::jail::{self, JailArgs};
use crate::{cgroup, console, signals};

const DEFAULT_CMDLINE: &str = "console=ttyS0";

#[derive(Args)]
pub struct RunArgs {
    /// A VM spec file (TOML, or JSON if it ends in .json); flags override its fields.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kernel image: a bzImage, or a vmlinux ELF with a PVH note.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0].
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Guest memory, e.g. 256M or 2G; a bare number is MiB [default: 256M].
    #[arg(long, value_name = "SIZE")]
    memory: Option<ByteSize>,
    /// Do not let KSM merge this VM's memory with identical pages elsewhere.
    #[arg(long)]
    no_page_sharing: bool,
    /// The page-sharing domain (`memory.sharing_domain`): reported in the stats; the host
    /// daemon lets only VMs of one domain share pages.
    #[arg(long, value_name = "NAME")]
    sharing_domain: Option<String>,
    /// Seconds per working-set sampling period; 0 turns sampling off [default: 30].
    #[arg(long, value_name = "SECS")]
    sampling_period: Option<u32>,
    /// Guest pages sampled per period [default: 100].
    #[arg(long, value_name = "N")]
    sampling_pages: Option<u32>,
    /// Run even on a KVM without hardware virtualization (extremely slow guests).
    #[arg(long)]
    allow_slow_kvm: bool,
    /// A virtio-blk disk: `path=IMG[,ro][,id=SERIAL]`; repeat for more (vda, vdb, ...).
    #[arg(long = "disk", value_name = "path=IMG[,ro][,id=SERIAL]")]
    disks: Vec<skiff_api::DiskSpec>,
    /// No virtio-rng device.
    #[arg(long)]
    no_rng: bool,
    /// A virtio-net interface on a tap (created if missing): `tap=NAME[,bridge=BR][,mac=MAC]`;
    /// repeat for more.
    #[arg(long = "nic", value_name = "tap=NAME[,bridge=BR][,mac=MAC]")]
    nics: Vec<skiff_api::NicSpec>,
    /// A vsock device (vhost-vsock) with guest CID N: `cid=N`.
    #[arg(long, value_name = "cid=N")]
    vsock: Option<skiff_api::VsockSpec>,
    /// No virtio-balloon device (on by default, with stats and free page reporting).
    #[arg(long)]
    no_balloon: bool,
    /// Seconds between balloon statistics requests; 0 offers no stats queue [default: 1].
    #[arg(long, value_name = "SECS")]
    balloon_stats_interval: Option<u32>,
    /// No free page reporting: memory the guest frees stays with the VMM.
    #[arg(long)]
    no_free_page_reporting: bool,
    /// Serve the control protocol (`skiff ctl`: stats, pause, resume, stop, balloon,
    /// sampling, reclaim, page sharing) on this unix socket.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Write the exit status here (one number) when the VM ends, for a supervisor that is
    /// not this process's parent (the host daemon after a restart).
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    #[command(flatten)]
    cgroup: cgroup::CgroupArgs,
    /// Per-thread seccomp filters: `on` ends the VM on a call outside a thread's list,
    /// `log` only has the kernel log it, `off` installs none.
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: SeccompMode,
    /// Test hook: the thread of this role calls a system call that no filter allows.
    #[arg(long, value_name = "ROLE", hide = true)]
    test_forbidden_syscall: Option<seccomp::Role>,
    #[command(flatten)]
    jail: JailArgs,
    /// Disk INDEX is the inherited open descriptor FD, not its path (the host daemon opens
    /// disks itself and hands them over).
    #[arg(long = "disk-fd", value_name = "INDEX=FD", hide = true, value_parser = parse_disk_fd)]
    disk_fds: Vec<(usize, i32)>,
}

fn parse_disk_fd(s: &str) -> std::result::Result<(usize, i32), String> {
    let (index, fd) = s.split_once('=').ok_or("expected INDEX=FD")?;
    let index = index
        .parse()
        .map_err(|_| format!("bad disk index `{index}`"))?;
    let fd: i32 = fd.parse().map_err(|_| format!("bad descriptor `{fd}`"))?;
    if fd <= libc::STDERR_FILENO {
        return Err(format!("descriptor {fd} is stdio, not a disk"));
    }
    Ok((index, fd))
}

impl RunArgs {
    /// Takes the disks handed over open (`--disk-fd`) into `config`; returns the largest
    /// one's size.
    fn adopt_disks(&self, config: &mut VmConfig) -> Result<u64> {
        let mut largest = 0;
        for &(index, fd) in &self.disk_fds {
            let disk =
                config.devices.disks.get_mut(index).with_context(|| {
                    format!("--disk-fd {index}={fd}: the VM has no disk {index}")
                })?;
            // SAFETY: F_GETFD on any number is harmless; it tells whether `fd` is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                anyhow::bail!("--disk-fd {index}={fd}: descriptor {fd} is not open");
            }
            // SAFETY: `fd` is open (checked above), inherited for this very purpose, and
            // named once on the command line: this is its only owner.
            let file = unsafe { std::fs::File::from_raw_fd(fd) };
            largest = largest.max(disk.adopt(file)?);
        }
        Ok(largest)
    }

    fn vm_config(&self, spec: &VmSpec) -> VmConfig {
        let mut config = VmConfig::from_spec(spec);
        config.mergeable = spec.memory.page_sharing && !self.no_page_sharing;
        config.allow_slow_kvm = self.allow_slow_kvm;
        config
    }

    fn spec(&self) -> Result<VmSpec> {
        let mut spec = match &self.config {
            Some(path) => read_spec(path)?,
            None => VmSpec {
                name: None,
                vcpus: 1,
                memory: MemorySpec::of_size(ByteSize::from_mib(256)),
                kernel: PathBuf::new(),
                initrd: None,
                cmdline: DEFAULT_CMDLINE.to_string(),
                disks: Vec::new(),
                nics: Vec::new(),
                vsock: None,
                rng: true,
                balloon: skiff_api::BalloonSpec::default(),
                cpu: skiff_api::CpuSpec::default(),
                restart: skiff_api::RestartPolicy::default(),
                working_set: skiff_api::WorkingSetSpec::default(),
                address: None,
            },
        };
        if let Some(kernel) = &self.kernel {
            spec.kernel = kernel.clone();
        }
        if let Some(initrd) = &self.initrd {
            spec.initrd = Some(initrd.clone());
        }
        if let Some(cmdline) = &self.cmdline {
            spec.cmdline = cmdline.clone();
        }
        if let Some(vcpus) = self.vcpus {
            spec.vcpus = vcpus;
        }
        self.cgroup.apply_to(&mut spec.cpu);
        if let Some(memory) = self.memory {
            spec.memory.size = memory;
        }
        spec.disks.extend(self.disks.iter().cloned());
        spec.nics.extend(self.nics.iter().cloned());
        if let Some(vsock) = self.vsock {
            spec.vsock = Some(vsock);
        }
        if self.no_rng {
            spec.rng = false;
        }
        if self.no_balloon {
            spec.balloon.enabled = false;
        }
        if let Some(secs) = self.balloon_stats_interval {
            spec.balloon.stats_interval_secs = secs;
        }
        if self.no_free_page_reporting {
            spec.balloon.free_page_reporting = false;
        }
        if let Some(domain) = &self.sharing_domain {
            spec.memory.sharing_domain = Some(domain.clone());
        }
        if let Some(secs) = self.sampling_period {
            spec.working_set.period_secs = secs;
        }
        if let Some(pages) = self.sampling_pages {
            spec.working_set.pages = pages;
        }
        if spec.kernel.as_os_str().is_empty() {
            anyhow::bail!("no kernel: pass --kernel PATH or a spec file with `kernel`");
        }
        spec.validate()?;
        if let Some(nic) = spec.nics.iter().find(|n| n.tap.is_empty()) {
            anyhow::bail!(
                "nics.network: `{}` is a managed network of the host daemon: create the VM \
                 with `skiff vm create`, or give the NIC a tap",
                nic.network.as_deref().unwrap_or_default()
            );
        }
        Ok(spec)
    }
}

fn read_spec(path: &PathBuf) -> Result<VmSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec {}", path.display()))?;
    let spec = if path.extension().is_some_and(|e| e == "json") {
        VmSpec::from_json(&text)
    } else {
        VmSpec::from_toml(&text)
    };
    spec.with_context(|| format!("invalid spec {}", path.display()))
}

/// Boots the VM (jailed, with `--jail`) and returns the process exit status that reports
/// how it ended.
pub fn run(args: RunArgs) -> Result<u8> {
    // Opened now: once the VM runs, its main thread may open nothing (seccomp), and a jailed
    // VMM could not reach the path. It stays empty until the VM ends, which a reader takes
    // for "no status", as it does a missing file.
    let mut status_file = args
        .status_file
        .as_ref()
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
        })
        .transpose()?;
    let result = boot_and_wait(args, &mut status_file);
    if let Some(mut file) = status_file {
        let code = result.as_ref().map_or(1, |code| *code);
        if let Err(e) = file.write_all(format!("{code}\n").as_bytes()) {
            eprintln!("skiff: cannot write the status file: {e}");
        }
    }
    result
}

/// `status_file` is the supervisor's: a jailed VMM closes it (it may not write the host's
/// record of how it ended).
fn boot_and_wait(args: RunArgs, status_file: &mut Option<std::fs::File>) -> Result<u8> {
    let spec = args.spec()?;
    // Before any thread starts (and before the jail's fork): they are all born in the group.
    cgroup::join(&args.cgroup, &spec.cpu, spec.memory.size.bytes())?;
    let (Some(dir), Some(uid), Some(gid)) = (&args.jail.jail, args.jail.uid, args.jail.gid) else {
        let mut config = args.vm_config(&spec);
        args.adopt_disks(&mut config)?;
        return run_vm(&args, config, args.control_socket.as_deref());
    };
    let plan = jail::plan(&spec, dir, uid, gid, args.control_socket.as_deref())?;
    match skiff_jail::fork_into_pid_namespace()? {
        Forked::Parent { child } => {
            // The disks handed over open are the jailed VMM's alone from here.
            for &(_, fd) in &args.disk_fds {
                // SAFETY: closes a descriptor this process inherited for the child, which
                // has its own copy; nothing here uses it.
                unsafe { libc::close(fd) };
            }
            Ok(jail::supervise(child, &plan))
        }
        Forked::Child => {
            drop(status_file.take());
            // The supervisor reports the status (and writes the status file): the child
            // ends here, never returning into the caller's clean-up.
            let code = run_jailed(&args, &plan).unwrap_or_else(|e| {
                eprintln!("skiff: error: {e:#}");
                1
            });
            std::process::exit(i32::from(code))
        }
    }
}

/// The jailed child: opens its taps, enters the jail, runs the VM with the jail's paths.
fn run_jailed(args: &RunArgs, plan: &jail::Plan) -> Result<u8> {
    let mut config = args.vm_config(&plan.spec);
    // Taps are opened in the host's network namespace, where their bridges are.
    for (index, nic) in config.devices.nics.iter_mut().enumerate() {
        nic.preopen(index)?;
    }
    // Disks too (unless handed over open): the jail holds neither their paths nor device
    // nodes that would open. The VMM writes up to a disk's end (RLIMIT_FSIZE).
    let mut jail = plan.jail.clone();
    jail.limits.fsize = jail.limits.fsize.max(args.adopt_disks(&mut config)?);
    for disk in config
        .devices
        .disks
        .iter_mut()
        .filter(|d| d.opened.is_none())
    {
        jail.limits.fsize = jail.limits.fsize.max(disk.preopen()?);
    }
    skiff_jail::enter(&jail)?;
    let socket = plan.control_socket.as_ref().map(|s| s.in_jail.as_path());
    run_vm(args, config, socket)
}

/// Runs the VM in this process.
fn run_vm(args: &RunArgs, config: VmConfig, control_socket: Option<&Path>) -> Result<u8> {
    seccomp::init(seccomp::Policy {
        mode: args.seccomp,
        test_violation: args.test_forbidden_syscall,
    })?;
    signals::block_termination_signals().context("cannot block termination signals")?;
    signals::ignore_file_size_signal().context("cannot ignore SIGXFSZ")?;
    let vm = Vm::create(&config, Box::new(console::output()?))?;
    signals::forward_to(vm.exit_sender()).context("cannot start the signal thread")?;

    let interactive = console::stdin_is_terminal();
    if interactive {
        console::enter_raw_mode().context("cannot put the terminal in raw mode")?;
        eprint!("skiff: console attached; Ctrl-A x quits\r\n");
    }
    console::forward_input(vm.serial(), vm.exit_sender(), interactive);

    let running = vm.start();
    let running = match running {
        Ok(running) => running,
        Err(e) => {
            console::restore_terminal();
            return Err(e.into());
        }
    };
    if let Some(path) = control_socket {
        if let Err(e) = skiff_vmm::control::serve(path, running.handle()) {
            console::restore_terminal();
            return Err(e.into());
        }
    }
    if let Err(e) = seccomp::confine(seccomp::Role::Main) {
        console::restore_terminal();
        return Err(e.into());
    }
    let exit = running.wait();
    console::restore_terminal();
    if let Some(path) = control_socket {
        // Nothing listens there any more; a stale socket would only mislead clients.
        let _ = std::fs::remove_file(path);
    }
    if let Some(line) = exit.describe() {
        eprintln!("skiff: {line}");
    }
    Ok(u8::try_from(exit.exit_code()).unwrap_or(1))
}
