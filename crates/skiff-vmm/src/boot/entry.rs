//! The CPU state a kernel expects at its entry point: the 64-bit Linux boot protocol for a
//! bzImage (long mode, identity-mapped page tables, RSI → zero page) and PVH for a vmlinux
//! (32-bit protected mode, paging off, EBX → hvm_start_info).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{BOOT_GDT, BOOT_IDT, IDENTITY_MAPPED, PD, PDPT, PML4};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set; everything else (IF included) clear.
const RFLAGS_RESERVED: u64 = 0x2;

const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;
const TWO_MIB: u64 = 2 << 20;

/// GDT selectors, as the Linux boot protocol names them (__BOOT_CS, __BOOT_DS).
const CODE_SELECTOR: u16 = 0x10;
const DATA_SELECTOR: u16 = 0x18;
const TSS_SELECTOR: u16 = 0x20;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// bzImage: 64-bit entry with RSI pointing at the zero page.
    Linux64 { rip: u64, zero_page: u64 },
    /// vmlinux with a PVH note: 32-bit entry with EBX pointing at hvm_start_info.
    Pvh { rip: u64, start_info: u64 },
}

impl EntryPoint {
    fn long_mode(&self) -> bool {
        matches!(self, EntryPoint::Linux64 { .. })
    }
}

/// Writes the GDT, an empty IDT and (for 64-bit entry) the identity page tables.
pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    entry: &EntryPoint,
) -> Result<(), GuestMemoryError> {
    let gdt = gdt(entry.long_mode());
    for (i, descriptor) in gdt.iter().enumerate() {
        mem.write_obj(*descriptor, GuestAddress(BOOT_GDT + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))?;
    if entry.long_mode() {
        write_identity_page_tables(mem)?;
    }
    Ok(())
}

/// Registers for the boot vCPU.
pub fn boot_regs(entry: &EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match *entry {
        EntryPoint::Linux64 { rip, zero_page } => {
            regs.rip = rip;
            regs.rsi = zero_page;
        }
        EntryPoint::Pvh { rip, start_info } => {
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    regs
}

/// Segment and control registers for the boot vCPU, starting from KVM's reset state.
pub fn boot_sregs(entry: &EntryPoint, mut sregs: kvm_sregs) -> kvm_sregs {
    let long_mode = entry.long_mode();
    let gdt = gdt(long_mode);
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;

    let code = segment(gdt[2], CODE_SELECTOR);
    let data = segment(gdt[3], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[4], TSS_SELECTOR);

    if long_mode {
        sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
        sregs.cr3 = PML4;
        sregs.cr4 = CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = CR0_PE | CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    sregs
}

/// null, null, code, data, TSS — flat segments.
fn gdt(long_mode: bool) -> [u64; 5] {
    let code_flags = if long_mode { 0xa09b } else { 0xc09b };
    [
        0,
        0,
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Packs a segment descriptor: `flags` holds the access byte (bits 0-7) and the
/// granularity/size nibble (bits 12-15), as in Linux's GDT_ENTRY.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of a descriptor, as the CPU would cache it after loading `selector`.
fn segment(descriptor: u64, selector: u16) -> kvm_segment {
    let bits = |shift: u32, width: u32| ((descriptor >> shift) & ((1 << width) - 1)) as u8;
    let granular = bits(55, 1) == 1;
    let raw_limit = ((descriptor >> 32) & 0x000f_0000) | (descriptor & 0xffff);
    let limit = if granular {
        ((raw_limit << 12) | 0xfff) as u32
    } else {
        raw_limit as u32
    };
    let base = ((descriptor >> 32) & 0xff00_0000) | ((descriptor >> 16) & 0x00ff_ffff);
    kvm_segment {
        base,
        limit,
        selector,
        type_: bits(40, 4),
        present: bits(47, 1),
        dpl: bits(45, 2),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: bits(55, 1),
        avl: bits(52, 1),
        unusable: 0,
        padding: 0,
    }
}

/// Identity-maps the first 4 GiB with 2 MiB pages: enough for the kernel, its zero page and
/// command line wherever they are below 4 GiB.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    let pd_count = IDENTITY_MAPPED / (512 * TWO_MIB);
    mem.write_obj(PDPT | PAGE_PRESENT_RW, GuestAddress(PML4))?;
    for i in 0..pd_count {
        let pd = PD + i * 4096;
        mem.write_obj(pd | PAGE_PRESENT_RW, GuestAddress(PDPT + i * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| {
                let addr = (i * 512 + j) * TWO_MIB;
                (addr | PAGE_PRESENT_RW | PAGE_HUGE).to_le_bytes()
            })
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(
            (
                code.base,
                code.limit,
                code.type_,
                code.l,
                code.db,
                code.present,
                code.s
            ),
            (0, 0xffff_ffff, 0xb, 1, 0, 1, 1)
        );
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), DATA_SELECTOR);
        assert_eq!((data.type_, data.db, data.g), (3, 1, 1));
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mem");
        write_identity_page_tables(&mem).expect("write");
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).expect("read");
        assert_eq!(pml4 & !0xfff, PDPT);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT + 3 * 8)).expect("read");
        let last_pd = pdpt3 & !0xfff;
        let last: u64 = mem.read_obj(GuestAddress(last_pd + 511 * 8)).expect("read");
        assert_eq!(last & !0xfff, (4 << 30) - TWO_MIB);
        assert_eq!(last & PAGE_HUGE, PAGE_HUGE);
    }

    #[test]
    fn entry_registers_follow_the_protocols() {
        let linux = EntryPoint::Linux64 {
            rip: 0x100200,
            zero_page: 0x7000,
        };
        let regs = boot_regs(&linux);
        assert_eq!((regs.rip, regs.rsi, regs.rflags), (0x100200, 0x7000, 2));
        let sregs = boot_sregs(&linux, kvm_sregs::default());
        assert_eq!(sregs.efer & EFER_LMA, EFER_LMA);
        assert_eq!(sregs.cs.selector, CODE_SELECTOR);

        let pvh = EntryPoint::Pvh {
            rip: 0x1000000,
            start_info: 0x6000,
        };
        assert_eq!(boot_regs(&pvh).rbx, 0x6000);
        let sregs = boot_sregs(&pvh, kvm_sregs::default());
        assert_eq!((sregs.cr0 & CR0_PG, sregs.efer), (0, 0));
    }
}
