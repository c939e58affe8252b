//! A writer for the "newc" cpio format, the one the Linux kernel unpacks as initramfs.
//!
//! Every entry gets its own inode number and a link count of 1 (no hard links are
//! written), so the kernel never tries to link entries together. Device nodes are
//! plain header entries: no root privileges are needed to put `/dev/console` in.

use std::io::{self, Read, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;

/// Streams cpio entries to `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

/// What an entry's header says beyond its name and size.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            offset: 0,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(
            name,
            Meta {
                mode: S_IFDIR | perm,
                rdev: (0, 0),
            },
            0,
            &mut io::empty(),
        )
    }

    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.entry(
            name,
            Meta {
                mode: S_IFREG | perm,
                rdev: (0, 0),
            },
            size,
            data,
        )
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        let target = target.as_bytes();
        self.entry(
            name,
            Meta {
                mode: S_IFLNK | 0o777,
                rdev: (0, 0),
            },
            target.len() as u64,
            &mut &target[..],
        )
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(
            name,
            Meta {
                mode: S_IFCHR | perm,
                rdev: (major, minor),
            },
            0,
            &mut io::empty(),
        )
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(
            TRAILER,
            Meta {
                mode: 0,
                rdev: (0, 0),
            },
            0,
            0,
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, meta: Meta, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, meta, ino, size)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        self.offset += size;
        self.pad()
    }

    fn header(&mut self, name: &str, meta: Meta, ino: u32, size: u64) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: over 4 GiB"))
        })?;
        let name_size = name.len() + 1;
        let nlink = if meta.mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            meta.mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, for reproducible archives
            size,
            0, // devmajor
            0, // devminor
            meta.rdev.0,
            meta.rdev.1,
            name_size as u32,
            0, // check
        ];
        let mut header = String::with_capacity(110 + name_size);
        header.push_str(MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        header.push_str(name);
        header.push('\0');
        self.out.write_all(header.as_bytes())?;
        self.offset += header.len() as u64;
        self.pad()
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.offset % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad as usize])?;
        self.offset += pad;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).expect("dir");
        w.char_dev("dev/console", 0o600, 5, 1).expect("dev");
        w.symlink("bin/sh", "busybox").expect("symlink");
        w.file("init", 0o755, 3, &mut &b"abc"[..]).expect("file");
        let out = w.finish().expect("finish");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("070701"));
        assert!(text.contains("dev/console\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The console entry: mode 020600, rdev 5:1.
        let console = text.find("dev/console").expect("console entry");
        let header = &text[console - 110..console];
        assert_eq!(&header[14..22], "00002180");
        assert_eq!(&header[78..86], "00000005");
        assert_eq!(&header[86..94], "00000001");
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("x", 0o644, 10, &mut &b"abc"[..]).is_err());
    }
}
