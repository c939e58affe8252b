//! Where things live in guest-physical memory and I/O space. One table, so that boot code,
//! ACPI tables and devices cannot disagree.

/// The GDT the boot code installs for the entry state.
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT: interrupts stay off until the kernel installs its own.
pub const BOOT_IDT: u64 = 0x520;
/// PVH's `hvm_start_info`, followed by its memory map and module list.
pub const PVH_INFO: u64 = 0x6000;
/// Linux's zero page (`boot_params`) for the bzImage 64-bit boot protocol.
pub const ZERO_PAGE: u64 = 0x7000;
/// Identity page tables for the 64-bit entry: PML4, one PDPT, four PDs of 2 MiB pages.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// The page tables map this much, identity, with 2 MiB pages.
pub const IDENTITY_MAPPED: u64 = 4 << 30;
/// The kernel command line.
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// Start of the Extended BIOS Data Area; RAM below it is usable.
pub const EBDA: u64 = 0x9fc00;
/// ACPI tables, RSDP first, in the BIOS area where Linux also scans for the RSDP.
pub const ACPI_TABLES: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// Kernels are loaded here (1 MiB), as the boot protocol expects.
pub const HIGH_RAM: u64 = 0x100000;

/// Guest RAM above this moves to above 4 GiB, leaving a hole for MMIO (PCI, APICs).
pub const MMIO_HOLE_START: u64 = 3 << 30;
pub const MMIO_HOLE_END: u64 = 4 << 30;
/// PCI: the host bridge's memory window, where BARs are assigned (32-bit, so guests need
/// no 64-bit BAR support and the window never moves with the RAM size), then ECAM for bus 0.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_END: u64 = 0xe000_0000;
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map below 4 GiB on Intel.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const CMOS_PORT: u16 = 0x70;
pub const CMOS_IRQ: u32 = 8;
/// The ACPI Generic Event Device's interrupt: it signals the power button.
pub const GED_IRQ: u32 = 5;
/// pvpanic: the guest writes here when it panics (QEMU0001 in the DSDT).
pub const PVPANIC_PORT: u16 = 0x505;
/// PCI configuration mechanism #1 (0xCF8 address, 0xCFC data).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// ACPI hardware-reduced sleep control/status and reset registers (FADT).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// The sleep type the DSDT's `_S5_` names, which the guest writes to power off.
pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
