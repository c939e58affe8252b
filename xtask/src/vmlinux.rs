//! Turning a bzImage into the vmlinux ELF it carries, and checking its PVH entry note.
//!
//! The x86 boot protocol (>= 2.08) records where the compressed kernel sits
//! (`payload_offset`, `payload_length`, relative to the protected-mode code, which
//! starts after `setup_sects + 1` sectors). The kernel build appends the uncompressed
//! size as a little-endian u32 to the payload. The compression is recognised by magic.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use object::elf::{FileHeader64, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Magic of the LZ4 "legacy" frame format the kernel's `lz4 -l` writes.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Blocks of the LZ4 legacy format decompress to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

fn u16_at(data: &[u8], off: usize) -> Result<u16> {
    let bytes = data.get(off..off + 2).context("bzImage header truncated")?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    let bytes = data.get(off..off + 4).context("data truncated")?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The compressed payload inside a bzImage.
pub fn payload(bzimage: &[u8]) -> Result<&[u8]> {
    ensure!(
        bzimage.get(0x202..0x206) == Some(b"HdrS"),
        "not a bzImage (no HdrS signature)"
    );
    let version = u16_at(bzimage, 0x206)?;
    ensure!(
        version >= 0x208,
        "boot protocol {version:#x} predates payload_offset"
    );
    let setup_sects = match bzimage.get(0x1f1).copied().context("header truncated")? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(bzimage, 0x248)? as usize;
    let len = u32_at(bzimage, 0x24c)? as usize;
    bzimage
        .get(start..start + len)
        .context("payload lies outside the bzImage")
}

/// The vmlinux ELF inside a bzImage.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>> {
    let payload = payload(bzimage)?;
    ensure!(payload.len() > 8, "payload too short");
    let expected = u32_at(payload, payload.len() - 4)? as usize;
    let vmlinux = decompress(payload, expected)?;
    ensure!(
        vmlinux.len() == expected,
        "decompressed {} bytes, the bzImage says {expected}",
        vmlinux.len()
    );
    ensure!(
        vmlinux.starts_with(b"\x7fELF"),
        "decompressed payload is not an ELF"
    );
    Ok(vmlinux)
}

fn decompress(payload: &[u8], expected: usize) -> Result<Vec<u8>> {
    match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => lz4_legacy(payload, expected),
        [0x1f, 0x8b, ..] => {
            let mut out = Vec::with_capacity(expected);
            flate2::read::GzDecoder::new(payload)
                .read_to_end(&mut out)
                .context("gzip payload")?;
            Ok(out)
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => external(&["zstd", "-dcq"], payload, expected),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
            external(&["xz", "-dcq", "--single-stream"], payload, expected)
        }
        [b'B', b'Z', b'h', ..] => external(&["bzip2", "-dcq"], payload, expected),
        [0x5d, 0, 0, ..] => external(&["lzma", "-dcq"], payload, expected),
        [0x89, b'L', b'Z', b'O', ..] => external(&["lzop", "-dcq"], payload, expected),
        _ => bail!(
            "unknown kernel compression (payload starts with {:02x?})",
            &payload[..payload.len().min(6)]
        ),
    }
}

/// Decodes the LZ4 legacy frame format: a magic, then blocks each prefixed by its
/// compressed length (u32 LE); a repeated magic starts a new stream. The last four
/// payload bytes are the appended size, not a block.
fn lz4_legacy(payload: &[u8], expected: usize) -> Result<Vec<u8>> {
    let end = payload.len() - 4;
    let mut out = vec![0u8; expected];
    let mut written = 0;
    let mut pos = 0;
    while pos + 4 <= end {
        let len = u32_at(payload, pos)?;
        pos += 4;
        if len == LZ4_LEGACY_MAGIC {
            continue;
        }
        let block = payload
            .get(pos..pos + len as usize)
            .context("LZ4 block runs past the payload")?;
        pos += len as usize;
        let room = (expected - written).min(LZ4_LEGACY_BLOCK);
        let n = lz4_flex::block::decompress_into(block, &mut out[written..written + room])
            .map_err(|e| anyhow::anyhow!("LZ4 block at offset {pos}: {e}"))?;
        written += n;
    }
    out.truncate(written);
    Ok(out)
}

/// Pipes the payload through a decompressor from Debian (zstd, xz, ...). Those tools
/// may complain about the appended size bytes, so success is judged by the length.
fn external(argv: &[&str], payload: &[u8], expected: usize) -> Result<Vec<u8>> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run `{}` to decompress the kernel", argv[0]))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut out = Vec::with_capacity(expected);
    std::thread::scope(|s| -> Result<()> {
        let writer = s.spawn(move || stdin.write_all(payload));
        child
            .stdout
            .take()
            .context("no stdout")?
            .read_to_end(&mut out)?;
        // A write error (EPIPE on trailing bytes) is judged by the output length below.
        let _ = writer.join();
        Ok(())
    })?;
    child.wait()?;
    out.truncate(expected);
    Ok(out)
}

/// The PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`) of a vmlinux ELF.
pub fn pvh_entry(elf: &[u8]) -> Result<u32> {
    let header = FileHeader64::<Endianness>::parse(elf).context("not an ELF64 file")?;
    let endian = header.endian().context("bad ELF endianness")?;
    for segment in header.program_headers(endian, elf)? {
        if segment.p_type(endian) != PT_NOTE {
            continue;
        }
        let Some(mut notes) = segment.notes(endian, elf)? else {
            continue;
        };
        while let Some(note) = notes.next()? {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return u32_at(note.desc(), 0).context("PVH note too short");
            }
        }
    }
    bail!("vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz4_legacy_round_trip() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let block = lz4_flex::block::compress(&data);
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(decompress(&payload, data.len()).expect("decompress"), data);
    }

    /// A minimal bzImage: 1 setup sector + boot sector, then an LZ4 payload.
    fn fake_bzimage(elf: &[u8]) -> Vec<u8> {
        let block = lz4_flex::block::compress(elf);
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut image = vec![0u8; 2 * 512 + 16];
        image[0x1f1] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&payload);
        image
    }

    #[test]
    fn extracts_the_payload_of_a_bzimage() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..50_000u32).map(|i| (i % 7) as u8));
        assert_eq!(extract(&fake_bzimage(&elf)).expect("extract"), elf);
        assert!(extract(&fake_bzimage(b"not an elf at all")).is_err());
    }

    #[test]
    fn rejects_non_bzimage() {
        assert!(payload(&[0u8; 4096]).is_err());
    }
}
