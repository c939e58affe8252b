//! What to boot: the VMM, the guest's shape and the command it runs.

use std::ffi::OsString;
use std::process::Command;
use std::time::Duration;

use base64::Engine;

use crate::{Error, RunOutput, TestEnv, Vm};

/// Which VMM boots the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// `$SKIFF_BIN run ...`
    Skiff,
    /// Debian's `qemu-system-x86_64` (microvm, KVM): the reference.
    Qemu,
}

/// Which form of the same kernel is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// `SKIFF_KERNEL` (Linux boot protocol).
    BzImage,
    /// `SKIFF_VMLINUX` (ELF, PVH entry).
    Vmlinux,
}

/// The kernel parameters every guest gets (before [`GuestSpec::cmdline`] additions).
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// A guest to boot. Build one with [`GuestSpec::new`] and the builder methods, then
/// [`run`](GuestSpec::run) it to completion or [`spawn`](GuestSpec::spawn) it.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub vmm: Vmm,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: KernelKind,
    /// Shell command the guest runs (`None`: an interactive shell on the console).
    pub cmd: Option<String>,
    /// Extra kernel parameters.
    pub cmdline: Vec<String>,
    /// Extra arguments for the VMM.
    pub vmm_args: Vec<OsString>,
    /// How long [`GuestSpec::run`] waits for the VMM to exit.
    pub timeout: Duration,
    /// Whether the guest powers off after its command (else `skiff.nopoweroff`).
    pub poweroff: bool,
}

impl GuestSpec {
    /// 1 vCPU, 256 MiB, bzImage for Skiff and vmlinux (PVH) for QEMU, no command,
    /// 60 s timeout (a guest boots in 3-6 s in the emulated host).
    pub fn new(vmm: Vmm) -> Self {
        Self {
            vmm,
            vcpus: 1,
            memory_mib: 256,
            kernel: match vmm {
                Vmm::Skiff => KernelKind::BzImage,
                Vmm::Qemu => KernelKind::Vmlinux,
            },
            cmd: None,
            cmdline: Vec::new(),
            vmm_args: Vec::new(),
            timeout: Duration::from_secs(60),
            poweroff: true,
        }
    }

    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn kernel(mut self, kind: KernelKind) -> Self {
        self.kernel = kind;
        self
    }

    /// The shell command the guest runs; its exit status becomes
    /// [`RunOutput::guest_status`].
    pub fn cmd(mut self, cmd: impl Into<String>) -> Self {
        self.cmd = Some(cmd.into());
        self
    }

    /// Adds a kernel parameter.
    pub fn cmdline(mut self, param: impl Into<String>) -> Self {
        self.cmdline.push(param.into());
        self
    }

    /// Adds an argument to the VMM's command line.
    pub fn vmm_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.vmm_args.push(arg.into());
        self
    }

    pub fn vmm_args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.vmm_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Keep the guest running after its command (stop it with [`Vm::signal`]).
    pub fn no_poweroff(mut self) -> Self {
        self.poweroff = false;
        self
    }

    /// The guest kernel's command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut params = vec![BASE_CMDLINE.to_owned()];
        if let Some(cmd) = &self.cmd {
            let encoded = base64::engine::general_purpose::STANDARD.encode(cmd);
            params.push(format!("skiff.cmd={encoded}"));
        }
        if !self.poweroff {
            params.push("skiff.nopoweroff".to_owned());
        }
        params.extend(self.cmdline.iter().cloned());
        params.join(" ")
    }

    /// The VMM's command line, with stdio not yet configured.
    pub fn command(&self, env: &TestEnv) -> Command {
        let kernel = match self.kernel {
            KernelKind::BzImage => &env.kernel,
            KernelKind::Vmlinux => &env.vmlinux,
        };
        let mut cmd;
        match self.vmm {
            Vmm::Skiff => {
                cmd = Command::new(&env.skiff_bin);
                cmd.arg("run")
                    .arg("--kernel")
                    .arg(kernel)
                    .arg("--initrd")
                    .arg(&env.initrd)
                    .arg("--cmdline")
                    .arg(self.kernel_cmdline())
                    .arg("--vcpus")
                    .arg(self.vcpus.to_string())
                    .arg("--memory")
                    .arg(format!("{}M", self.memory_mib))
                    .args(&env.skiff_extra_args);
                let jailed_by_test = self.vmm_args.iter().any(|a| a == "--jail");
                if let (Some((uid, gid)), false) = (env.jail, jailed_by_test) {
                    self.jail_args(&mut cmd, env, uid, gid);
                }
            }
            Vmm::Qemu => {
                cmd = Command::new(&env.qemu);
                cmd.arg("-L")
                    .arg(&env.qemu_datadir)
                    .args(["-M", "microvm,accel=kvm,rtc=on", "-cpu", "host"])
                    .args(["-smp", &self.vcpus.to_string()])
                    .args(["-m", &format!("{}M", self.memory_mib)])
                    .args([
                        "-nographic",
                        "-no-reboot",
                        "-nodefaults",
                        "-serial",
                        "stdio",
                    ])
                    .arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(&env.initrd)
                    .arg("-append")
                    .arg(self.kernel_cmdline());
            }
        }
        cmd.args(&self.vmm_args);
        cmd
    }

    /// `--jail` in a fresh directory, with the disk images given to the jail's uid (the
    /// jailed VMM opens them as that uid).
    fn jail_args(&self, cmd: &mut Command, env: &TestEnv, uid: u32, gid: u32) {
        let dir = env.scratch("jail");
        cmd.arg("--jail")
            .arg(&dir)
            .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()]);
        let disks = self
            .vmm_args
            .windows(2)
            .filter(|pair| pair[0] == "--disk")
            .filter_map(|pair| pair[1].to_str()?.split(',').next()?.strip_prefix("path="));
        for disk in disks {
            // A test whose image cannot be chowned fails on opening it, with the path.
            let _ = std::os::unix::fs::chown(disk, Some(uid), Some(gid));
        }
    }

    /// Boots the guest and waits until the VMM exits (or the timeout kills it).
    /// A guest command that fails is not an error here: see [`RunOutput::guest_status`]
    /// and [`GuestSpec::run_ok`].
    ///
    /// In the emulated host a Skiff guest that died of a triple fault is booted once more,
    /// and the first run's output printed: QEMU's software emulation of AMD-V kills about
    /// one guest in a suite run that way, on a different test each time (docs/testing.md).
    /// A guest that triple-faults twice fails the test as before. A guest whose kernel
    /// never reached its init before the timeout (in the emulated host only) is booted
    /// once more the same way.
    pub fn run(&self) -> Result<RunOutput, Error> {
        let out = match self.spawn()?.wait(self.timeout) {
            Ok(out) => out,
            // A guest whose kernel never reached its init: in the emulated host, an SMP
            // boot whose IPI the emulator lost (vCPUs halted, one spinning) looks so.
            Err(Error::Timeout { context, .. })
                if self.vmm == Vmm::Skiff
                    && !context.contains(crate::INIT_READY)
                    && TestEnv::try_get()?.emulated =>
            {
                crate::retry::announce(
                    "the guest's kernel never reached its init in the emulated host; booting it once more",
                );
                eprintln!("First run, whose guest never reached its init:\n{context}");
                return self.spawn()?.wait(self.timeout);
            }
            Err(e) => return Err(e),
        };
        if self.vmm == Vmm::Skiff && out.triple_fault() && TestEnv::try_get()?.emulated {
            crate::retry::announce(
                "the guest died of a triple fault in the emulated host; booting it once more",
            );
            eprintln!("First run, whose guest died of a triple fault:\n{out}");
            return self.spawn()?.wait(self.timeout);
        }
        Ok(out)
    }

    /// Boots the guest and panics, with its console output, unless its command ran and
    /// exited 0 and the VMM exited 0.
    #[track_caller]
    pub fn run_ok(&self) -> RunOutput {
        let out = match self.run() {
            Ok(out) => out,
            Err(err) => panic!("{:?} guest failed: {err}", self.vmm),
        };
        out.assert_success();
        out
    }

    /// Starts the VMM and returns at once: read the console, send signals, wait.
    pub fn spawn(&self) -> Result<Vm, Error> {
        Vm::spawn(self, TestEnv::try_get()?)
    }
}
