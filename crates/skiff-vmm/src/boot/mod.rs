//! Loading a guest: kernel (bzImage or PVH vmlinux), initrd, command line, the memory map
//! and ACPI tables, and the entry state of the boot vCPU.

pub mod acpi;
pub mod entry;
mod file_map;
pub mod kernel;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, Cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

pub use entry::EntryPoint;
pub use kernel::{load_kernel, KernelError, LoadedKernel};

use crate::layout::{
    ACPI_TABLES, ACPI_TABLES_END, CMDLINE, CMDLINE_MAX, EBDA, HIGH_RAM, PVH_INFO, ZERO_PAGE,
};
use crate::memory::{GuestRam, PAGE_SIZE};
use file_map::FileMap;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// Linux's x86 COMMAND_LINE_SIZE.
const LINUX_CMDLINE_MAX: usize = 2048;
/// Boot protocol: the 64-bit entry is 0x200 past the protected-mode code.
const STARTUP_64_OFFSET: u64 = 0x200;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
const PVH_MAGIC: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read kernel {path}: {source}")]
    KernelIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel { path: PathBuf },
    #[error("{path} is an ELF file but not a loadable vmlinux ({reason})")]
    NotVmlinux { path: PathBuf, reason: String },
    #[error(
        "{path} is an ELF file without a PVH entry note; Skiff boots vmlinux files through PVH"
    )]
    NoPvhEntry { path: PathBuf },
    #[error("{path} is a bzImage without a 64-bit entry point (boot protocol too old or 32-bit)")]
    NoLongModeEntry { path: PathBuf },
    #[error("cannot load kernel {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot read initrd {path}: {source}")]
    InitrdIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel command line is too long ({len} bytes; at most {max})")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write boot structures to guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub vcpus: u32,
}

/// Loads everything into guest memory and returns where the boot vCPU starts.
pub fn load(ram: &GuestRam, spec: &BootSpec<'_>) -> Result<EntryPoint, BootError> {
    let mem = ram.memory();
    let path = spec.kernel;
    let io = |source| BootError::KernelIo {
        path: path.to_path_buf(),
        source,
    };
    let image = FileMap::open(path).map_err(io)?;
    let kernel =
        load_kernel(mem, &mut Cursor::new(image.bytes())).map_err(|e| kernel_error(path, e))?;
    drop(image);
    let rsdp = acpi::write_tables(mem, spec.vcpus)?;
    let e820 = e820_map(ram);

    let entry = match kernel {
        LoadedKernel::BzImage {
            header,
            load_addr,
            end,
        } => {
            let cmdline_max = (header.cmdline_size as usize).clamp(255, LINUX_CMDLINE_MAX);
            let cmdline_len = write_cmdline(ram, spec.cmdline, cmdline_max)?;
            let initrd_limit = u64::from(header.initrd_addr_max).saturating_add(1);
            let initrd = match spec.initrd {
                Some(p) => Some(load_initrd(ram, p, end, initrd_limit)?),
                None => None,
            };

            let mut params = boot_params {
                hdr: header,
                ..Default::default()
            };
            params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
            params.hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
            params.hdr.heap_end_ptr = 0xfe00;
            params.hdr.cmd_line_ptr = CMDLINE as u32;
            params.hdr.cmdline_size = cmdline_len as u32;
            if let Some((addr, size)) = initrd {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            params.acpi_rsdp_addr = rsdp.0;
            params.e820_entries = e820.len() as u8;
            for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
                *slot = boot_e820_entry {
                    addr: e.addr,
                    size: e.size,
                    r#type: e.kind,
                };
            }
            mem.write_obj(params, GuestAddress(ZERO_PAGE))?;
            EntryPoint::Linux64 {
                rip: load_addr + STARTUP_64_OFFSET,
                zero_page: ZERO_PAGE,
            }
        }
        LoadedKernel::Pvh { entry, end } => {
            write_cmdline(ram, spec.cmdline, LINUX_CMDLINE_MAX)?;
            let initrd = match spec.initrd {
                Some(p) => Some(load_initrd(ram, p, end, u64::MAX)?),
                None => None,
            };
            write_pvh_start_info(ram, &e820, rsdp.0, initrd)?;
            EntryPoint::Pvh {
                rip: entry,
                start_info: PVH_INFO,
            }
        }
    };
    entry::write_boot_structures(mem, &entry)?;
    Ok(entry)
}

/// A kernel loading error with the image's name.
fn kernel_error(path: &Path, e: KernelError) -> BootError {
    let path = path.to_path_buf();
    match e {
        KernelError::Io(source) => BootError::KernelIo { path, source },
        KernelError::NotAKernel => BootError::NotAKernel { path },
        KernelError::NotVmlinux(reason) => BootError::NotVmlinux { path, reason },
        KernelError::NoPvhEntry => BootError::NoPvhEntry { path },
        KernelError::NoLongModeEntry => BootError::NoLongModeEntry { path },
        KernelError::Load(reason) => BootError::Load { path, reason },
        e @ KernelError::TooLarge { .. } => BootError::Load {
            path,
            reason: e.to_string(),
        },
    }
}

fn write_cmdline(ram: &GuestRam, text: &str, max: usize) -> Result<usize, BootError> {
    let max = max.min(CMDLINE_MAX);
    if text.len() + 1 > max {
        return Err(BootError::CmdlineTooLong {
            len: text.len(),
            max: max - 1,
        });
    }
    let mut cmdline = Cmdline::new(max).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !text.is_empty() {
        cmdline
            .insert_str(text)
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    loader::load_cmdline(ram.memory(), GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    Ok(text.len())
}

/// Puts the initrd as high as possible in low RAM (below `limit`), above the kernel.
fn load_initrd(
    ram: &GuestRam,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    let io = |source| BootError::InitrdIo {
        path: path.to_path_buf(),
        source,
    };
    let image = FileMap::open(path).map_err(io)?;
    let size = image.bytes().len() as u64;
    let top = ram.low_ram_end().min(limit);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end.max(HIGH_RAM) {
        return Err(too_large());
    }
    ram.memory()
        .read_exact_volatile_from(GuestAddress(addr), &mut image.bytes(), size as usize)
        .map_err(|e| BootError::InitrdIo {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

fn e820_map(ram: &GuestRam) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA,
            size: 0xa0000 - EBDA,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_TABLES,
            size: ACPI_TABLES_END - ACPI_TABLES,
            kind: E820_RESERVED,
        },
    ];
    for region in ram.regions() {
        let start = region.guest_addr.max(HIGH_RAM);
        let end = region.guest_addr + region.len;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

fn write_pvh_start_info(
    ram: &GuestRam,
    e820: &[E820Entry],
    rsdp: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mem = ram.memory();
    let start_info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr = PVH_INFO + start_info_size.next_multiple_of(16);
    let memmap_addr =
        modlist_addr + (std::mem::size_of::<hvm_modlist_entry>() as u64).next_multiple_of(16);
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: rsdp,
        memmap_paddr: memmap_addr,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))?;
    }
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = memmap_addr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamOptions;
    use std::io::Write;

    #[test]
    fn e820_covers_ram_and_reserves_bios_areas() {
        let ram = GuestRam::new(256 << 20, RamOptions::default()).expect("ram");
        let map = e820_map(&ram);
        let ram_bytes: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_bytes, EBDA + (256 << 20) - HIGH_RAM);
        assert!(map
            .iter()
            .any(|e| e.kind == E820_RESERVED && e.addr == ACPI_TABLES));
    }

    #[test]
    fn non_kernels_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("skiff-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("not-a-kernel");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(b"hello, I am text"))
            .expect("write");
        let ram = GuestRam::new(64 << 20, RamOptions::default()).expect("ram");
        let spec = BootSpec {
            kernel: &path,
            initrd: None,
            cmdline: "",
            vcpus: 1,
        };
        let err = load(&ram, &spec).expect_err("text is not a kernel");
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
        let missing = dir.join("missing");
        let spec = BootSpec {
            kernel: &missing,
            ..spec
        };
        assert!(matches!(load(&ram, &spec), Err(BootError::KernelIo { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn long_command_lines_are_refused() {
        let ram = GuestRam::new(64 << 20, RamOptions::default()).expect("ram");
        let long = "x".repeat(5000);
        assert!(matches!(
            write_cmdline(&ram, &long, LINUX_CMDLINE_MAX),
            Err(BootError::CmdlineTooLong { .. })
        ));
        assert_eq!(
            write_cmdline(&ram, "console=ttyS0", 2048).expect("fits"),
            13
        );
    }
}
