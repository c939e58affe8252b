//! A qcow2 image behind a block device, with its backing chain, read and written through
//! the imago crate: reads of clusters the image does not hold go down the chain (to the
//! shared base of a VM's overlay), writes allocate clusters in the image itself.
//!
//! A guest FLUSH writes imago's cached metadata (L2 and refcount tables) and then syncs the
//! file, so what the guest flushed survives a crash of the VMM with the image consistent.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use imago::file::File;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::FormatAccess;
use vm_memory::VolatileSlice;

use super::{Disk, DiskError, StickyFlush};

pub struct Qcow2Disk {
    image: FormatAccess<File>,
    len: u64,
    flushed: StickyFlush,
}

impl Qcow2Disk {
    /// Opens `path` as qcow2 (read-only or read-write, locked like a raw image) with its
    /// backing chain, which must be loop-free and at most 16 deep. An image that was not
    /// declared qcow2 (`declared`: false, its format was detected from its magic) must not
    /// name a backing file: a guest that wrote a qcow2 header into a raw disk would
    /// otherwise make the VMM read a host file of its choosing at the next start.
    pub fn open(path: &Path, read_only: bool, declared: bool) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Self::from_file(path, file, read_only, declared)
    }

    /// Like [`Qcow2Disk::open`], with the image already open (handed over by the daemon);
    /// `path` names it and resolves its backing files.
    pub fn from_file(
        path: &Path,
        file: std::fs::File,
        read_only: bool,
        declared: bool,
    ) -> Result<Self, DiskError> {
        let name = || path.display().to_string();
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            return Err(DiskError::Locked { path: name() });
        }
        let refused = |why: String| DiskError::Open {
            path: name(),
            source: io::Error::other(why),
        };
        if !declared {
            let backing = skiff_images::backing_of(path)
                .map_err(|e| refused(format!("not a valid qcow2 image: {e}")))?;
            if backing.is_some() {
                return Err(refused(
                    "a qcow2 image with a backing file must be declared with format=qcow2".into(),
                ));
            }
        }
        let image =
            skiff_images::open_qcow2(path, file, !read_only).map_err(|e| refused(e.to_string()))?;
        let len = image.size();
        Ok(Qcow2Disk {
            image,
            len,
            flushed: StickyFlush::default(),
        })
    }

    /// Fills `bufs` from the image at `offset` (through the backing chain where the image
    /// holds no data).
    pub fn read_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.check(bufs, offset)?;
        let (iov, _mapped) = IoVectorMut::from_volatile_slice(bufs);
        self.image.readv(iov, offset)
    }

    /// Writes `bufs` to the image at `offset`, allocating clusters as needed.
    pub fn write_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.check(bufs, offset)?;
        let (iov, _mapped) = IoVector::from_volatile_slice(bufs);
        self.image.writev(iov, offset)
    }

    /// Metadata to the file, then the file to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        self.image.flush()?;
        self.image.sync()
    }

    /// A request past the end is an error (imago would read it as zeros).
    fn check(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let total = bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        match offset.checked_add(total) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
}

impl Disk for Qcow2Disk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.read_at(bufs, offset)
    }

    fn write_vectored_at(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.write_at(bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.flushed.flush(|| self.sync())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{open_disk, DiskFormat, OpenMode};

    fn rw(read_only: bool) -> OpenMode {
        OpenMode {
            read_only,
            ..OpenMode::default()
        }
    }
    use super::*;
    use std::process::Command;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn qemu_img(args: &[&str]) -> std::process::Output {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (qemu-utils) must be installed");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8")
    }

    #[test]
    fn an_overlay_reads_its_base_and_keeps_its_writes() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().join("base.raw");
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&base, &data).expect("base");
        let overlay = dir.path().join("vm.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            s(&overlay),
            "2M",
        ]);

        let refused = open_disk(&overlay, rw(false), None)
            .err()
            .expect("undeclared backing");
        assert!(refused.to_string().contains("format=qcow2"), "{refused}");
        let disk = open_disk(&overlay, rw(false), Some(DiskFormat::Qcow2)).expect("open");
        assert_eq!(disk.len(), 2 << 20);
        assert!(matches!(
            open_disk(&overlay, rw(false), Some(DiskFormat::Qcow2)),
            Err(DiskError::Locked { .. })
        ));

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).expect("mem");
        // Two pieces spanning a cluster boundary (64 KiB): backing data on both sides.
        let pieces = [(0x1000, 3000usize), (0x8000, 5000)];
        let slices: Vec<_> = pieces
            .iter()
            .map(|&(a, n)| mem.get_slice(GuestAddress(a), n).expect("slice"))
            .collect();
        let at = 65536 - 3000;
        disk.read_vectored_at(&slices, at as u64).expect("read");
        let mut got = vec![0u8; 3000];
        mem.read_slice(&mut got, GuestAddress(0x1000))
            .expect("guest");
        assert_eq!(got, data[at..at + 3000]);

        mem.write_slice(&[0xabu8; 3000], GuestAddress(0x1000))
            .expect("guest");
        disk.write_vectored_at(&slices[..1], 4096).expect("write");
        // Past the base's end, inside the overlay's larger size: zeros, then written.
        disk.write_vectored_at(&slices[..1], (1 << 20) + 512)
            .expect("write");
        let past = disk.read_vectored_at(&slices, (2 << 20) - 4000);
        assert_eq!(
            past.map_err(|e| e.kind()),
            Err(io::ErrorKind::UnexpectedEof)
        );
        disk.flush().expect("flush");
        drop(disk);

        qemu_img(&["check", s(&overlay)]);
        assert_eq!(
            std::fs::read(&base).expect("base"),
            data,
            "the base is untouched"
        );
        let flat = dir.path().join("flat.raw");
        qemu_img(&["convert", "-O", "raw", s(&overlay), s(&flat)]);
        let flat = std::fs::read(&flat).expect("flat");
        let mut expect = data.clone();
        expect.resize(2 << 20, 0);
        expect[4096..7096].fill(0xab);
        expect[(1 << 20) + 512..(1 << 20) + 3512].fill(0xab);
        assert!(
            flat == expect,
            "qemu-img reads what was written through imago"
        );
    }

    #[test]
    fn a_backing_loop_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = dir.path().join("a.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", s(&a), "1M"]);
        qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&a)]);
        let e = open_disk(&a, rw(true), Some(DiskFormat::Qcow2))
            .err()
            .expect("loop");
        assert!(e.to_string().contains("backing-file loop"), "{e}");
        // Without a backing file, a detected qcow2 image is served.
        let plain = dir.path().join("plain.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", s(&plain), "1M"]);
        assert_eq!(
            open_disk(&plain, rw(true), None).expect("open").len(),
            1 << 20
        );
    }
}
