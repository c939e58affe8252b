//! Recognising a kernel image and loading it into guest memory: a bzImage with a 64-bit
//! entry, or an ELF vmlinux with a PVH entry note. Pure over any seekable reader and guest
//! memory (no files, no KVM), so a fuzz target can feed it arbitrary bytes.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::layout::HIGH_RAM;

const BOOT_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const XLF_KERNEL_64: u16 = 1;
/// The oldest boot protocol with `xloadflags` (2.12).
const MIN_64BIT_PROTOCOL: u16 = 0x20c;

/// Why an image cannot be booted; the caller adds the file's name.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("neither a bzImage nor an ELF vmlinux")]
    NotAKernel,
    #[error("an ELF file but not a loadable vmlinux ({0})")]
    NotVmlinux(String),
    #[error("an ELF file without a PVH entry note")]
    NoPvhEntry,
    #[error("a bzImage without a 64-bit entry point")]
    NoLongModeEntry,
    #[error("{0}")]
    Load(String),
}

/// A kernel in guest memory.
#[derive(Debug)]
pub enum LoadedKernel {
    /// Protected-mode code loaded at `load_addr`; `header` is its boot protocol header.
    BzImage {
        header: setup_header,
        load_addr: u64,
        end: u64,
    },
    /// Segments loaded; the PVH entry is at `entry`.
    Pvh { entry: u64, end: u64 },
}

impl LoadedKernel {
    /// The first guest address above the kernel.
    pub fn end(&self) -> u64 {
        match self {
            LoadedKernel::BzImage { end, .. } | LoadedKernel::Pvh { end, .. } => *end,
        }
    }
}

enum Kind {
    BzImage,
    Elf,
}

/// Loads the kernel in `image` above [`HIGH_RAM`].
pub fn load_kernel<F>(mem: &GuestMemoryMmap, image: &mut F) -> Result<LoadedKernel, KernelError>
where
    F: Read + ReadVolatile + Seek,
{
    let kind = detect(image)?.ok_or(KernelError::NotAKernel)?;
    let high = Some(GuestAddress(HIGH_RAM));
    match kind {
        Kind::BzImage => {
            let loaded = BzImage::load(mem, None, image, high)
                .map_err(|e| KernelError::Load(e.to_string()))?;
            let header = loaded
                .setup_header
                .ok_or_else(|| KernelError::Load("no setup header".into()))?;
            if header.version < MIN_64BIT_PROTOCOL || header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(KernelError::NoLongModeEntry);
            }
            Ok(LoadedKernel::BzImage {
                header,
                load_addr: loaded.kernel_load.0,
                end: loaded.kernel_end,
            })
        }
        Kind::Elf => {
            let loaded = Elf::load(mem, None, image, high)
                .map_err(|e| KernelError::NotVmlinux(e.to_string()))?;
            let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                return Err(KernelError::NoPvhEntry);
            };
            Ok(LoadedKernel::Pvh {
                entry: entry.0,
                end: loaded.kernel_end,
            })
        }
    }
}

fn detect<F: Read + Seek>(image: &mut F) -> std::io::Result<Option<Kind>> {
    let mut head = [0u8; 0x210];
    image.seek(SeekFrom::Start(0))?;
    let n = read_up_to(image, &mut head)?;
    image.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(Kind::Elf));
    }
    if n >= 0x206 {
        let boot_flag = u16::from_le_bytes([head[0x1fe], head[0x1ff]]);
        let magic = u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]);
        if boot_flag == BOOT_MAGIC && magic == HDRS_MAGIC {
            return Ok(Some(Kind::BzImage));
        }
    }
    Ok(None)
}

fn read_up_to<F: Read>(image: &mut F, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match image.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem")
    }

    #[test]
    fn text_and_truncated_headers_are_not_kernels() {
        let m = mem();
        let err = load_kernel(&m, &mut Cursor::new(b"hello".to_vec()));
        assert!(matches!(err, Err(KernelError::NotAKernel)), "{err:?}");
        // A bzImage signature with a header too short to hold a kernel.
        let mut bz = vec![0u8; 0x210];
        bz[0x1fe..0x200].copy_from_slice(&BOOT_MAGIC.to_le_bytes());
        bz[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        let err = load_kernel(&m, &mut Cursor::new(bz));
        assert!(matches!(err, Err(KernelError::Load(_))), "{err:?}");
        let err = load_kernel(&m, &mut Cursor::new(b"\x7fELF\x02\x01".to_vec()));
        assert!(matches!(err, Err(KernelError::NotVmlinux(_))), "{err:?}");
    }
}
