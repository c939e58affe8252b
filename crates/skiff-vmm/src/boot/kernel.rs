//! Recognising a kernel image and loading it into guest memory: a bzImage with a 64-bit
//! entry, or an ELF vmlinux with a PVH entry note. Pure over any seekable reader and guest
//! memory (no files, no KVM), so a fuzz target can feed it arbitrary bytes.

use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

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
    #[error(
        "it needs guest memory up to {end:#x} ({} MiB), more than the guest has",
        end.div_ceil(1 << 20)
    )]
    TooLarge { end: u64 },
}

/// A kernel in guest memory.
#[derive(Debug)]
pub enum LoadedKernel {
    /// Protected-mode code loaded at `load_addr`; `header` is its boot protocol header.
    /// `end` covers where it decompresses itself, which the initrd must stay clear of.
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

/// Loads the kernel in `image` above [`HIGH_RAM`]; it must fit in guest RAM whole, its
/// zero-filled part (an ELF segment's memory size beyond its file size) included.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, image: &mut F) -> Result<LoadedKernel, KernelError>
where
    F: Read + ReadVolatile + Seek,
{
    let kernel = load_image(mem, image)?;
    // linux-loader checks what it copies, not the ELF's zero-filled tail (found by fuzzing).
    let end = kernel.end();
    let fits = end
        .checked_sub(HIGH_RAM)
        .and_then(|len| usize::try_from(len).ok())
        .is_some_and(|len| GuestMemoryBackend::check_range(mem, GuestAddress(HIGH_RAM), len));
    if !fits {
        return Err(KernelError::TooLarge { end });
    }
    Ok(kernel)
}

fn load_image<F>(mem: &GuestMemoryMmap, image: &mut F) -> Result<LoadedKernel, KernelError>
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
            // The compressed kernel unpacks itself at its preferred address (a relocatable
            // one loaded lower moves up to it) and needs `init_size` bytes there before it
            // reads the memory map: a guest without them dies of a triple fault.
            let runtime_start = header.pref_address.max(loaded.kernel_load.0);
            let end = runtime_start
                .saturating_add(u64::from(header.init_size))
                .max(loaded.kernel_end);
            Ok(LoadedKernel::BzImage {
                header,
                load_addr: loaded.kernel_load.0,
                end,
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

    /// A 64-bit ELF with one PT_LOAD of 16 bytes of `hlt` at 1 MiB (`memsz` in memory) and
    /// a PT_NOTE holding the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY, 18).
    fn pvh_elf(memsz: u64) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        const NOTE: usize = EHDR + 2 * PHDR;
        const CODE: usize = 0x100;
        let mut e = vec![0u8; CODE + 16];
        let mut put = |at: usize, bytes: &[u8]| e[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, b"\x7fELF\x02\x01\x01");
        put(16, &2u16.to_le_bytes()); // ET_EXEC
        put(18, &0x3eu16.to_le_bytes()); // x86-64
        put(20, &1u32.to_le_bytes());
        put(24, &HIGH_RAM.to_le_bytes()); // e_entry
        put(32, &(EHDR as u64).to_le_bytes()); // e_phoff
        put(52, &(EHDR as u16).to_le_bytes());
        put(54, &(PHDR as u16).to_le_bytes());
        put(56, &2u16.to_le_bytes()); // e_phnum
        let phdr = |kind: u32, offset: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut p = Vec::new();
            p.extend_from_slice(&kind.to_le_bytes());
            p.extend_from_slice(&5u32.to_le_bytes());
            for v in [offset, addr, addr, filesz, memsz, 0x1000] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            p
        };
        put(EHDR, &phdr(1, CODE as u64, HIGH_RAM, 16, memsz));
        put(EHDR + PHDR, &phdr(4, NOTE as u64, 0, 20, 20));
        let mut note = Vec::new();
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&(HIGH_RAM as u32).to_le_bytes());
        put(NOTE, &note);
        put(CODE, &[0xf4; 16]);
        e
    }

    /// A bzImage (boot protocol 2.15, 64-bit entry, relocatable) whose decompressed kernel
    /// needs `init_size` bytes at 2 MiB.
    fn bzimage(init_size: u32) -> Vec<u8> {
        const SETUP_SECTS: usize = 4;
        let mut bz = vec![0u8; (SETUP_SECTS + 1) * 512 + 0x1000];
        let mut put = |at: usize, bytes: &[u8]| bz[at..at + bytes.len()].copy_from_slice(bytes);
        put(0x1f1, &[SETUP_SECTS as u8]);
        put(0x1fe, &BOOT_MAGIC.to_le_bytes());
        put(0x202, &HDRS_MAGIC.to_le_bytes());
        put(0x206, &0x020fu16.to_le_bytes()); // version
        put(0x211, &[1]); // loadflags: LOADED_HIGH
        put(0x214, &(HIGH_RAM as u32).to_le_bytes()); // code32_start
        put(0x234, &[1]); // relocatable_kernel
        put(0x236, &XLF_KERNEL_64.to_le_bytes());
        put(0x258, &(2u64 << 20).to_le_bytes()); // pref_address
        put(0x260, &init_size.to_le_bytes());
        bz
    }

    #[test]
    fn a_bzimage_needs_room_to_decompress_itself() {
        let m = mem();
        let ok = load_kernel(&m, &mut Cursor::new(bzimage(1 << 20))).expect("loads");
        assert_eq!(ok.end(), 3 << 20, "{ok:?}");
        // 4 MiB of RAM; 2 MiB + 3 MiB needed (a triple fault in the guest, before).
        let err = load_kernel(&m, &mut Cursor::new(bzimage(3 << 20))).expect_err("refused");
        assert!(
            matches!(err, KernelError::TooLarge { end } if end == 5 << 20),
            "{err:?}"
        );
        assert!(err.to_string().contains("(5 MiB)"), "{err}");
    }

    #[test]
    fn a_pvh_elf_loads_and_one_larger_than_ram_is_refused() {
        let m = mem();
        let ok = load_kernel(&m, &mut Cursor::new(pvh_elf(0x1000))).expect("loads");
        assert!(
            matches!(ok, LoadedKernel::Pvh { entry, end } if entry == HIGH_RAM && end == HIGH_RAM + 0x1000),
            "{ok:?}"
        );
        // Regression (fuzz target `kernel`): a zero-filled tail far past RAM was accepted.
        let err = load_kernel(&m, &mut Cursor::new(pvh_elf(0x5d_0000_1010)));
        assert!(matches!(err, Err(KernelError::TooLarge { .. })), "{err:?}");
    }
}
