//! PCI and virtio in the VMM: the root bus wired to the port and MMIO buses, MSI-X on KVM
//! (irqfd + GSI routing), queue notifications on ioeventfd, and the VM's virtio devices in
//! a small typed registry, each on its own worker thread.

pub mod acpi;
pub mod balloon;
pub mod bus;
pub mod disk;
pub mod interrupts;
pub mod net;

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use skiff_pci::PciRoot;
use skiff_virtio::devices::balloon::Balloon;
use skiff_virtio::devices::block::{Block, BlockOptions, DiskError, IoPool};
pub use skiff_virtio::devices::block::{DiskFormat, IO_DEPTH};
use skiff_virtio::devices::rng::Rng;
use skiff_virtio::transport::TransportError;
use skiff_virtio::worker::Worker;
use skiff_virtio::{GuestMemoryProvider, SharedMemory, VirtioDevice, VirtioPciDevice};
use vm_memory::GuestMemoryMmap;

use crate::devices::IoBus;
use crate::layout::{PCI_CONFIG_PORT, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_END, PCI_MMIO_START};
use crate::memory::GuestRam;
use crate::mmio::{MmioBus, MmioOverlapError};
use crate::seccomp::{self, DeviceRole, Role};
use crate::VmmError;
use bus::{BarWindow, ConfigPorts, Ecam};
use interrupts::{GsiRouting, KvmMsiVectors, KvmNotifier};

pub use disk::DiskConfig;

/// Which paravirtual devices the VM gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PciConfig {
    pub rng: bool,
    pub disks: Vec<DiskConfig>,
    /// The virtio-balloon device, if any.
    pub balloon: Option<balloon::BalloonSettings>,
    /// virtio-net interfaces on taps.
    pub nics: Vec<net::NicConfig>,
    /// A vsock device with this guest CID.
    pub vsock: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The error names the disk's path.
    #[error("{source}")]
    Disk { index: usize, source: DiskError },
    #[error("{name}: {source}")]
    Transport {
        name: String,
        source: TransportError,
    },
    #[error("cannot put {name} on the PCI bus: {source}")]
    Pci {
        name: String,
        source: skiff_pci::PciError,
    },
    #[error("cannot start the worker thread of {name}: {source}")]
    Worker {
        name: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mmio(#[from] MmioOverlapError),
    #[error(transparent)]
    Net(#[from] net::NetError),
}

impl GuestMemoryProvider for GuestRam {
    fn memory(&self) -> &GuestMemoryMmap {
        GuestRam::memory(self)
    }
}

/// One virtio device on the bus, with its typed back end.
pub struct Attached<D> {
    pub device: Arc<Mutex<D>>,
    pub slot: u8,
}

/// The VM's PCI devices by name: no lookup by type, no downcasting.
pub struct PciDevices {
    pub root: bus::SharedRoot,
    pub rng: Option<Attached<Rng>>,
    pub disks: Vec<Attached<Block>>,
    pub balloon: Option<Attached<Balloon>>,
    pub nics: Vec<Attached<skiff_virtio::devices::net::Net>>,
    pub vsock: Option<Attached<skiff_virtio::devices::vsock::Vsock>>,
    workers: Vec<Worker>,
    stats_timer: Option<balloon::StatsTimer>,
}

impl PciDevices {
    /// Stops the device worker threads (the VM is going away).
    pub fn stop(self) {
        if let Some(timer) = self.stats_timer {
            timer.stop();
        }
        for w in self.workers {
            w.stop();
        }
    }
}

/// Builds the root bus and the configured devices and connects them to the VM.
pub fn attach(
    vm_fd: &Arc<VmFd>,
    ram: &GuestRam,
    config: &PciConfig,
    io_bus: &mut IoBus,
    mmio_bus: &mut MmioBus,
) -> Result<PciDevices, VmmError> {
    let root: bus::SharedRoot = Arc::new(Mutex::new(PciRoot::new(PCI_MMIO_START, PCI_MMIO_END)));
    io_bus.register(
        PCI_CONFIG_PORT,
        8,
        Arc::new(Mutex::new(ConfigPorts(root.clone()))),
    )?;
    mmio_bus
        .register(PCI_ECAM_START, PCI_ECAM_SIZE, Arc::new(Ecam(root.clone())))
        .map_err(DeviceError::from)?;
    let window = BarWindow {
        root: root.clone(),
        base: PCI_MMIO_START,
    };
    mmio_bus
        .register(
            PCI_MMIO_START,
            PCI_MMIO_END - PCI_MMIO_START,
            Arc::new(window),
        )
        .map_err(DeviceError::from)?;

    let mut builder = Builder {
        vm_fd: vm_fd.clone(),
        routing: Arc::new(GsiRouting::new(vm_fd.clone())),
        mem: Arc::new(ram.clone()),
        root: root.clone(),
        workers: Vec::new(),
    };
    let rng = match config.rng {
        true => Some(builder.add(Rng::default(), DeviceRole::Rng)?),
        false => None,
    };
    let mut disks = Vec::with_capacity(config.disks.len());
    for (index, disk) in config.disks.iter().enumerate() {
        let file = disk
            .open()
            .map_err(|source| DeviceError::Disk { index, source })?;
        let options = BlockOptions {
            read_only: disk.read_only,
            id: disk.id.clone().unwrap_or_else(|| default_disk_id(index)),
        };
        let name = format!("blk{index}");
        let pool = IoPool::spawn(
            &name,
            IO_DEPTH,
            &seccomp::spawner(Role::Device(DeviceRole::Block)),
        )
        .map_err(|source| DeviceError::Worker { name, source })?;
        let block = Block::new(Arc::from(file), options).with_pool(pool);
        disks.push(builder.add(block, DeviceRole::Block)?);
    }
    let (balloon, stats_timer) = match &config.balloon {
        Some(settings) => {
            let device = Balloon::new(settings.options, ram.size(), Arc::new(ram.clone()));
            let attached = builder.add(device, DeviceRole::Balloon)?;
            let timer = match settings.options.stats {
                true => Some(
                    balloon::StatsTimer::spawn(attached.device.clone(), settings.stats_interval)
                        .map_err(|source| DeviceError::Worker {
                            name: "balloon-stats".into(),
                            source,
                        })?,
                ),
                false => None,
            };
            (Some(attached), timer)
        }
        None => (None, None),
    };
    let mut nics = Vec::with_capacity(config.nics.len());
    for (index, nic) in config.nics.iter().enumerate() {
        let device = net::open_nic(index, nic).map_err(DeviceError::from)?;
        nics.push(builder.add(device, DeviceRole::Net)?);
    }
    let vsock = match config.vsock {
        Some(cid) => {
            let device = net::open_vsock(cid, builder.mem.clone()).map_err(DeviceError::from)?;
            Some(builder.add(device, DeviceRole::Vsock)?)
        }
        None => None,
    };
    Ok(PciDevices {
        root,
        rng,
        disks,
        nics,
        vsock,
        balloon,
        stats_timer,
        workers: builder.workers,
    })
}

/// `vda`, `vdb`, ...: the names Linux will most likely give the disks, as serials.
fn default_disk_id(index: usize) -> String {
    let letter = (b'a' + (index % 26) as u8) as char;
    format!("vd{letter}")
}

struct Builder {
    vm_fd: Arc<VmFd>,
    routing: Arc<GsiRouting>,
    mem: SharedMemory,
    root: bus::SharedRoot,
    workers: Vec<Worker>,
}

impl Builder {
    /// Puts `device` on the bus with its worker thread, confined to `role`'s filter.
    fn add<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
        role: DeviceRole,
    ) -> Result<Attached<D>, VmmError> {
        let name = device.name().to_string();
        let vectors = device.queue_max_sizes().len() + 1;
        let device = Arc::new(Mutex::new(device));
        let msi = KvmMsiVectors::new(&self.vm_fd, self.routing.clone(), vectors)?;
        let notifier = Arc::new(KvmNotifier(self.vm_fd.clone()));
        let transport = VirtioPciDevice::new(
            device.clone(),
            self.mem.clone(),
            Arc::new(msi),
            Some(notifier),
        )
        .map_err(|source| DeviceError::Transport {
            name: name.clone(),
            source,
        })?;
        let notify = transport
            .notify_events()
            .map_err(|source| DeviceError::Worker {
                name: name.clone(),
                source,
            })?;
        let slot = skiff_pci::msix::lock(&self.root)
            .add_device(Arc::new(Mutex::new(transport)))
            .map_err(|source| DeviceError::Pci {
                name: name.clone(),
                source,
            })?;
        let spawn = seccomp::spawner(Role::Device(role));
        let worker = Worker::spawn(&name, device.clone(), notify, &spawn)
            .map_err(|source| DeviceError::Worker { name, source })?;
        self.workers.push(worker);
        Ok(Attached { device, slot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_disk_ids_follow_linux_names() {
        assert_eq!(default_disk_id(0), "vda");
        assert_eq!(default_disk_id(2), "vdc");
    }
}
