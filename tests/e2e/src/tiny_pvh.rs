//! A tiny PVH guest (about 4 KiB): an ELF whose PVH entry writes one line to COM1 and
//! halts. Booting it measures a VMM's own start-up, apart from any guest kernel.

/// The line the tiny guest prints.
pub const TINY_MARKER: &str = "SKIFF-TINY-READY";

const LOAD_ADDR: u32 = 0x0010_0000;
const CODE_OFFSET: usize = 0x1000;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const NOTE_OFFSET: usize = EHDR_SIZE + 2 * PHDR_SIZE;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_R: u32 = 4;
const PF_X: u32 = 1;

/// 32-bit code, entered in flat protected mode with paging off (the PVH entry state):
/// print the message at `msg` to port 0x3f8 byte by byte, then halt for good.
fn code() -> Vec<u8> {
    let mut code = Vec::new();
    let msg_addr = LOAD_ADDR + 21;
    code.push(0xbe); // mov esi, msg
    code.extend_from_slice(&msg_addr.to_le_bytes());
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    code.push(0xac); // 9: lodsb
    code.extend_from_slice(&[0x84, 0xc0]); // test al, al
    code.extend_from_slice(&[0x74, 0x03]); // jz done (17)
    code.push(0xee); // out dx, al
    code.extend_from_slice(&[0xeb, 0xf8]); // jmp 9
    code.push(0xfa); // 17: cli
    code.push(0xf4); // hlt
    code.extend_from_slice(&[0xeb, 0xfc]); // jmp 17
    debug_assert_eq!(code.len(), 21);
    code.extend_from_slice(TINY_MARKER.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    code
}

/// The ELF image.
pub fn tiny_pvh_elf() -> Vec<u8> {
    let code = code();
    let mut elf = vec![0u8; CODE_OFFSET + code.len()];
    let put = |elf: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        elf[at..at + bytes.len()].copy_from_slice(bytes);
    };
    // ELF header: 64-bit, little-endian, executable for x86-64.
    put(&mut elf, 0, b"\x7fELF\x02\x01\x01");
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut elf, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut elf, 20, &1u32.to_le_bytes());
    put(&mut elf, 24, &u64::from(LOAD_ADDR).to_le_bytes()); // e_entry
    put(&mut elf, 32, &(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    put(&mut elf, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(&mut elf, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(&mut elf, 56, &2u16.to_le_bytes()); // e_phnum
    put(&mut elf, 58, &64u16.to_le_bytes()); // e_shentsize

    let note_len = 12 + 4 + 4;
    let phdr = |kind: u32, flags: u32, offset: usize, addr: u64, size: usize, align: u64| {
        let mut p = Vec::with_capacity(PHDR_SIZE);
        p.extend_from_slice(&kind.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&(offset as u64).to_le_bytes());
        p.extend_from_slice(&addr.to_le_bytes()); // vaddr
        p.extend_from_slice(&addr.to_le_bytes()); // paddr
        p.extend_from_slice(&(size as u64).to_le_bytes()); // filesz
        p.extend_from_slice(&(size as u64).to_le_bytes()); // memsz
        p.extend_from_slice(&align.to_le_bytes());
        p
    };
    let load = phdr(
        PT_LOAD,
        PF_R | PF_X,
        CODE_OFFSET,
        u64::from(LOAD_ADDR),
        code.len(),
        0x1000,
    );
    put(&mut elf, EHDR_SIZE, &load);
    let note = phdr(PT_NOTE, PF_R, NOTE_OFFSET, 0, note_len, 4);
    put(&mut elf, EHDR_SIZE + PHDR_SIZE, &note);

    // The PVH note: name "Xen", type PHYS32_ENTRY, the 32-bit entry address.
    put(&mut elf, NOTE_OFFSET, &4u32.to_le_bytes());
    put(&mut elf, NOTE_OFFSET + 4, &4u32.to_le_bytes());
    put(
        &mut elf,
        NOTE_OFFSET + 8,
        &XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes(),
    );
    put(&mut elf, NOTE_OFFSET + 12, b"Xen\0");
    put(&mut elf, NOTE_OFFSET + 16, &LOAD_ADDR.to_le_bytes());

    put(&mut elf, CODE_OFFSET, &code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_is_small_and_carries_the_pvh_note() {
        let elf = tiny_pvh_elf();
        assert!(elf.len() < 8192);
        assert_eq!(&elf[..4], b"\x7fELF");
        let note = &elf[NOTE_OFFSET..NOTE_OFFSET + 20];
        assert_eq!(&note[12..16], b"Xen\0");
        assert_eq!(
            u32::from_le_bytes([note[16], note[17], note[18], note[19]]),
            LOAD_ADDR
        );
        let code = &elf[CODE_OFFSET..];
        let msg = &code[21..21 + TINY_MARKER.len()];
        assert_eq!(msg, TINY_MARKER.as_bytes());
    }
}
