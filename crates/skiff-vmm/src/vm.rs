//! A VM: KVM objects, guest RAM, the platform devices and the vCPUs, assembled in the
//! order KVM requires, then run until the first exit.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, BootSpec};
use crate::cpu::run_control::{self, RunControl};
use crate::cpu::Vcpu;
use crate::devices::cmos::Cmos;
use crate::devices::iobus::lock;
use crate::devices::power::{AcpiPowerRegisters, PowerButton, PvPanic};
use crate::devices::serial::SerialDevice;
use crate::devices::{EventFdTrigger, ExitTrigger, IoBus, Shared, I8042};
use crate::exit::{ExitSender, VmExit};
use crate::handle::VmHandle;
use crate::handle::{HandleDevices, MemoryServices};
use crate::host;
use crate::layout::{
    ACPI_SLEEP_CONTROL_PORT, CMOS_PORT, COM1_IRQ, COM1_PORT, GED_IRQ, I8042_PORT,
    KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, PVPANIC_PORT,
};
use crate::memory::dirty_log::GuestSlots;
use crate::memory::{GuestRam, RamOptions};
use crate::mmio::MmioBus;
use crate::pci::{self, DiskConfig, PciConfig, PciDevices};
use crate::seccomp;
use crate::VmmError;

/// Everything `skiff run` needs to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Let KSM merge this VM's identical pages.
    pub mergeable: bool,
    /// The page-sharing domain (reported; the host daemon enforces domains).
    pub sharing_domain: Option<String>,
    /// Working-set sampling (period 0: off, and no dirty logging).
    pub working_set: skiff_api::WorkingSetSpec,
    /// Run even on a KVM without hardware virtualization (kvm_pvm).
    pub allow_slow_kvm: bool,
    /// Paravirtual devices on PCI (virtio-rng, disks).
    pub devices: PciConfig,
}

impl VmConfig {
    pub fn from_spec(spec: &skiff_api::VmSpec) -> Self {
        VmConfig {
            vcpus: spec.vcpus,
            memory_bytes: spec.memory.size.bytes(),
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            cmdline: spec.cmdline.clone(),
            mergeable: spec.memory.page_sharing,
            sharing_domain: spec.memory.sharing_domain.clone(),
            working_set: spec.working_set,
            allow_slow_kvm: false,
            devices: PciConfig {
                rng: spec.rng,
                balloon: pci::balloon::BalloonSettings::from_spec(&spec.balloon),
                nics: spec
                    .nics
                    .iter()
                    .map(pci::net::NicConfig::from_spec)
                    .collect(),
                vsock: spec.vsock.map(|v| v.cid),
                disks: spec.disks.iter().map(DiskConfig::from_spec).collect(),
            },
        }
    }
}

/// A VM that is built but not yet running.
pub struct Vm {
    // Kept open for the VM's lifetime: the VM and vCPU fds refer to it.
    _kvm: Kvm,
    _vm_fd: Arc<VmFd>,
    ram: GuestRam,
    memory: MemoryServices,
    serial: Shared<SerialDevice>,
    exits: ExitSender,
    exit_rx: mpsc::Receiver<VmExit>,
    vcpus: Vec<Vcpu>,
    control: Arc<RunControl>,
    devices: PciDevices,
    power_button: Arc<PowerButton>,
}

impl Vm {
    /// Builds the VM; the guest's console output goes to `console`.
    pub fn create(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<Vm, VmmError> {
        let mut phases = Phases::start();
        let kvm = host::open_kvm(config.allow_slow_kvm)?;
        host::check_vcpus(&kvm, config.vcpus)?;
        host::check_memory(config.memory_bytes)?;
        phases.done("KVM opened, host checked");

        let vm_fd = Arc::new(kvm.create_vm().map_err(VmmError::kvm("create VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(VmmError::kvm("set TSS address"))?;
        if kvm.check_extension(kvm_ioctls::Cap::SetIdentityMapAddr) {
            vm_fd
                .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
                .map_err(VmmError::kvm("set identity map address"))?;
        }
        vm_fd
            .create_irq_chip()
            .map_err(VmmError::kvm("create in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(VmmError::kvm("create PIT"))?;
        phases.done("VM, irqchip and PIT created");

        let ram = GuestRam::new(
            config.memory_bytes,
            RamOptions {
                mergeable: config.mergeable,
            },
        )?;
        let sampling = config.working_set.period_secs > 0;
        // Without logging: the sampler turns it on once the guest has booted.
        let slots = GuestSlots::register(vm_fd.clone(), &ram, false)?;
        if sampling && !slots.can_log() {
            log::warn!("this KVM cannot sample the working set (no manual dirty log protection)");
        }
        let memory = MemoryServices::new(
            &ram,
            slots,
            config.working_set,
            config.sharing_domain.clone(),
        );

        phases.done("guest memory");
        let (exits, exit_rx) = ExitSender::channel();
        let (mut io_bus, serial, power_button) = platform_devices(&vm_fd, &exits, console)?;
        let mut mmio_bus = MmioBus::default();
        let devices = pci::attach(&vm_fd, &ram, &config.devices, &mut io_bus, &mut mmio_bus)?;
        let io_bus = Arc::new(io_bus);
        let mmio_bus = Arc::new(mmio_bus);

        let boot_spec = BootSpec {
            kernel: &config.kernel,
            initrd: config.initrd.as_deref(),
            cmdline: &config.cmdline,
            vcpus: config.vcpus,
        };
        phases.done("devices");
        let entry = boot::load(&ram, &boot_spec)?;
        phases.done("kernel, initrd and ACPI tables loaded");

        run_control::install_kick_handler().map_err(VmmError::Signal)?;
        let control = Arc::new(RunControl::default());
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::kvm("get supported CPUID"))?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(VmmError::kvm("create vCPU"))?;
            let mut vcpu = Vcpu::new(id, fd, io_bus.clone(), exits.clone(), control.clone());
            vcpu.set_mmio_bus(mmio_bus.clone());
            vcpu.configure(&supported, config.vcpus, (id == 0).then_some(&entry))?;
            vcpus.push(vcpu);
        }

        phases.done("vCPUs configured");
        if let Some(ms) = ms_since_process_start() {
            // What the VMM's own start-up costs a boot (docs/benchmarks.md).
            log::debug!("the guest starts {ms} ms after the VMM process did");
        }
        Ok(Vm {
            _kvm: kvm,
            _vm_fd: vm_fd,
            ram,
            memory,
            serial,
            exits,
            exit_rx,
            vcpus,
            control,
            devices,
            power_button,
        })
    }

    /// The console UART, for feeding it input.
    pub fn serial(&self) -> Shared<SerialDevice> {
        self.serial.clone()
    }

    /// Where to report an exit from outside (signals, the console escape).
    pub fn exit_sender(&self) -> ExitSender {
        self.exits.clone()
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The paravirtual devices, by name.
    pub fn devices(&self) -> &PciDevices {
        &self.devices
    }

    /// Starts the vCPU threads, each confined to its seccomp filter. They enter the guest
    /// when [`RunningVm::wait`] lets them: by then the caller has started and confined
    /// every other thread (control socket, main), so the guest never runs next to an
    /// unfiltered thread of this VMM.
    pub fn start(self) -> Result<RunningVm, VmmError> {
        let Vm {
            _kvm,
            _vm_fd,
            ram,
            memory,
            exits,
            exit_rx,
            vcpus,
            control,
            devices,
            power_button,
            ..
        } = self;
        let vcpu_count = vcpus.len() as u32;
        let gate = Arc::new(StartGate::default());
        let mut threads = Vec::with_capacity(vcpus.len());
        for (id, vcpu) in vcpus.into_iter().enumerate() {
            let ram = ram.clone();
            let gate = gate.clone();
            let handle = seccomp::spawn(
                format!("vcpu{id}"),
                seccomp::Role::Vcpu,
                crate::stacks::VCPU,
                move || {
                    let _ram = ram; // guest memory stays mapped while any vCPU can run
                    gate.wait();
                    vcpu.run();
                },
            )
            .map_err(VmmError::Thread)?;
            threads.push(handle.as_pthread_t());
        }
        memory.start().map_err(VmmError::Thread)?;
        Ok(RunningVm {
            _kvm,
            _vm_fd,
            gate,
            exit_rx,
            handle: VmHandle::new(
                control,
                threads,
                ram,
                exits,
                vcpu_count,
                HandleDevices {
                    balloon: devices.balloon.as_ref().map(|b| b.device.clone()),
                    power_button,
                },
                memory,
            ),
            devices,
        })
    }
}

/// A VM whose vCPUs run.
pub struct RunningVm {
    // KVM objects stay open until the process ends: vCPU threads still use them.
    _kvm: Kvm,
    _vm_fd: Arc<VmFd>,
    gate: Arc<StartGate>,
    exit_rx: mpsc::Receiver<VmExit>,
    handle: VmHandle,
    /// The PCI devices; their worker threads run until the process ends.
    devices: PciDevices,
}

impl RunningVm {
    /// Control over the running VM (pause, resume, stats, stop), for other threads.
    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// The paravirtual devices, by name.
    pub fn devices(&self) -> &PciDevices {
        &self.devices
    }

    /// Lets the vCPUs enter the guest, then blocks until the first reason to stop. The
    /// vCPU threads are left as they are: the caller ends the process, which is how a VMM
    /// stops its guest for good.
    pub fn wait(self) -> VmExit {
        self.gate.open();
        let exit = self.exit_rx.recv().unwrap_or_else(|_| VmExit::VcpuError {
            vcpu: 0,
            error: "every vCPU thread ended without a report".into(),
        });
        // The vCPU threads may still be inside KVM_RUN: never close their fds under them.
        std::mem::forget(self);
        exit
    }
}

fn platform_devices(
    vm_fd: &VmFd,
    exits: &ExitSender,
    console: Box<dyn Write + Send>,
) -> Result<(IoBus, Shared<SerialDevice>, Arc<PowerButton>), VmmError> {
    let button_irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm_fd
        .register_irqfd(&button_irq, GED_IRQ)
        .map_err(VmmError::kvm("connect the power button's interrupt"))?;
    let power_button = Arc::new(PowerButton::new(button_irq));
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm_fd
        .register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(VmmError::kvm("connect the serial interrupt"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(serial_irq),
        console,
    )));

    let i8042 = I8042(vm_superio::I8042Device::new(ExitTrigger::new(
        exits.clone(),
        VmExit::Reset,
    )));

    let mut bus = IoBus::default();
    bus.register(COM1_PORT, 8, serial.clone())?;
    bus.register(I8042_PORT, 5, Arc::new(Mutex::new(i8042)))?;
    bus.register(CMOS_PORT, 2, Arc::new(Mutex::new(Cmos::default())))?;
    bus.register(
        ACPI_SLEEP_CONTROL_PORT,
        3,
        Arc::new(Mutex::new(AcpiPowerRegisters::new(exits.clone()))),
    )?;
    bus.register(
        PVPANIC_PORT,
        1,
        Arc::new(Mutex::new(PvPanic::new(exits.clone()))),
    )?;
    Ok((bus, serial, power_button))
}

/// Holds the vCPU threads back until the rest of the VMM is ready (and confined).
#[derive(Default)]
struct StartGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl StartGate {
    fn wait(&self) {
        let mut open = lock(&self.open);
        while !*open {
            open = self
                .opened
                .wait(open)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn open(&self) {
        *lock(&self.open) = true;
        self.opened.notify_all();
    }
}

/// Milliseconds since this process started (`skiff run` executes the VMM in the same
/// process): its start time in /proc, in clock ticks of the boot-time clock, against
/// that clock now. None where /proc is missing. Clock ticks make it exact to 10 ms.
fn ms_since_process_start() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22 is the start time; fields are counted from 1 and the 3rd follows the
    // parenthesised command name, which may itself hold spaces.
    let start_ticks: u64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let ticks_per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec passed, which we own.
    if ticks_per_sec == 0 || unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    let now_ms =
        u64::try_from(now.tv_sec).ok()? * 1000 + u64::try_from(now.tv_nsec).ok()? / 1_000_000;
    now_ms.checked_sub(start_ticks * 1000 / ticks_per_sec)
}

/// Start-up phases with their durations, in the debug log (`SKIFF_LOG=debug`).
struct Phases {
    last: std::time::Instant,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
        }
    }

    fn done(&mut self, what: &str) {
        let now = std::time::Instant::now();
        log::debug!("{what}: {:.1} ms", (now - self.last).as_secs_f64() * 1000.0);
        self.last = now;
    }
}
