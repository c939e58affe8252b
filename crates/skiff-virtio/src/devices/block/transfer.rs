//! Moving data between a disk's file and guest memory: `preadv`/`pwritev` straight into the
//! guest's buffers (one copy, the kernel's), and for `cache=direct` a bounce through an
//! aligned buffer when the guest's buffers are not aligned as O_DIRECT requires.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::RawFd;

use vm_memory::VolatileSlice;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Read,
    Write,
}

/// The kernel's limit on iovecs per call (UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;
/// The bounce buffer: requests larger than this go through it in pieces.
const BOUNCE_BYTES: usize = 1 << 20;
/// Alignment of the bounce buffer: a page satisfies every device's DMA alignment.
const BOUNCE_ALIGN: usize = 4096;

/// Whether O_DIRECT can take `bufs` as they are: every buffer's address and length a
/// multiple of `align`.
pub fn aligned(bufs: &[VolatileSlice<'_>], align: usize) -> bool {
    bufs.iter().all(|b| {
        (b.ptr_guard().as_ptr() as usize).is_multiple_of(align) && b.len().is_multiple_of(align)
    })
}

/// `preadv`/`pwritev` between the file and guest memory directly (no bounce buffer: one
/// copy, as the kernel makes it), repeated until every buffer is done.
pub fn transfer_all(
    fd: RawFd,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    // The guards keep the slices' mappings valid while the kernel uses their addresses.
    let guards: Vec<_> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| b.ptr_guard_mut())
        .collect();
    let mut iovecs: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    let mut first = 0;
    let mut offset = offset;
    while first < iovecs.len() {
        let count = (iovecs.len() - first).min(MAX_IOVECS) as libc::c_int;
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let rest = iovecs[first..].as_ptr();
        // SAFETY: `rest` points to `count` iovecs, each describing guest memory that
        // `bufs` borrows and `guards` keeps mapped, with its true length; the kernel
        // touches only those bytes.
        let done = unsafe {
            match direction {
                Direction::Read => libc::preadv(fd, rest, count, at),
                Direction::Write => libc::pwritev(fd, rest, count, at),
            }
        };
        let mut done = match check(done, direction)? {
            Some(n) => n,
            None => continue,
        };
        offset += done as u64;
        // Drop the finished iovecs and trim a partly done one.
        while done > 0 {
            let iov = &mut iovecs[first];
            if done >= iov.iov_len {
                done -= iov.iov_len;
                first += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(done).cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

/// A system call's byte count: `None` for EINTR (try again), an error for 0 bytes or a
/// failure.
fn check(ret: isize, direction: Direction) -> io::Result<Option<usize>> {
    match usize::try_from(ret) {
        Ok(0) => Err(io::Error::from(match direction {
            Direction::Read => io::ErrorKind::UnexpectedEof,
            Direction::Write => io::ErrorKind::WriteZero,
        })),
        Ok(n) => Ok(Some(n)),
        Err(_) => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            Err(e)
        }
    }
}

/// A zeroed, page-aligned heap buffer.
struct Bounce {
    ptr: *mut u8,
    layout: Layout,
}

impl Bounce {
    fn new(len: usize) -> io::Result<Bounce> {
        let layout = Layout::from_size_align(len.max(1), BOUNCE_ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Bounce { ptr, layout })
    }

    fn bytes(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: `ptr` holds `layout.size()` initialised bytes that only `self` reaches;
        // `len` is capped to that size.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len.min(self.layout.size())) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Like [`transfer_all`], through an aligned buffer of at most [`BOUNCE_BYTES`] at a time
/// (so a guest's huge request cannot make the VMM allocate without bound).
pub fn transfer_bounced(
    fd: RawFd,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
    direction: Direction,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut bounce = Bounce::new(total.min(BOUNCE_BYTES))?;
    let mut done = 0;
    while done < total {
        let len = (total - done).min(BOUNCE_BYTES);
        let at = offset + done as u64;
        let chunk = bounce.bytes(len);
        if direction == Direction::Write {
            gather(bufs, done, chunk);
        }
        let mut moved = 0;
        while moved < len {
            let rest = &mut chunk[moved..];
            let pos = libc::off_t::try_from(at + moved as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: `rest` is a live, exclusively borrowed byte slice of its length.
            let ret = unsafe {
                match direction {
                    Direction::Read => libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), pos),
                    Direction::Write => libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), pos),
                }
            };
            if let Some(n) = check(ret, direction)? {
                moved += n;
            }
        }
        if direction == Direction::Read {
            scatter(bufs, done, chunk);
        }
        done += len;
    }
    Ok(())
}

/// Copies the bytes of `bufs` (taken as one run) from position `skip` into `out`.
fn gather(bufs: &[VolatileSlice<'_>], skip: usize, out: &mut [u8]) {
    let mut filled = 0;
    for_each_piece(bufs, skip, out.len(), |slice, len| {
        slice.copy_to(&mut out[filled..filled + len]);
        filled += len;
    });
}

/// Copies `data` into `bufs` (taken as one run) from position `skip`.
fn scatter(bufs: &[VolatileSlice<'_>], skip: usize, data: &[u8]) {
    let mut taken = 0;
    for_each_piece(bufs, skip, data.len(), |slice, len| {
        slice.copy_from(&data[taken..taken + len]);
        taken += len;
    });
}

/// Calls `f` with the pieces of `bufs` covering `[skip, skip + len)` of their run.
fn for_each_piece(
    bufs: &[VolatileSlice<'_>],
    mut skip: usize,
    mut len: usize,
    mut f: impl FnMut(VolatileSlice<'_>, usize),
) {
    for buf in bufs {
        if len == 0 {
            break;
        }
        if skip >= buf.len() {
            skip -= buf.len();
            continue;
        }
        let take = (buf.len() - skip).min(len);
        if let Ok(piece) = buf.subslice(skip, take) {
            f(piece, take);
        }
        skip = 0;
        len -= take;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn bounced_transfers_match_direct_ones() {
        let path = std::env::temp_dir().join(format!("skiff-bounce-{}", std::process::id()));
        let data: Vec<u8> = (0..3 * BOUNCE_BYTES as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("file");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("mem");
        // Odd addresses and lengths, more than one bounce buffer in all.
        let pieces = [
            (0x11, 777usize),
            (0x1001, BOUNCE_BYTES + 3),
            (0x20_0003, 4000),
        ];
        let slices: Vec<_> = pieces
            .iter()
            .map(|&(a, n)| mem.get_slice(GuestAddress(a), n).expect("slice"))
            .collect();
        assert!(!aligned(&slices, 512));
        transfer_bounced(file.as_raw_fd(), &slices, 5, Direction::Read).expect("read");
        let mut at = 5;
        for &(a, n) in &pieces {
            let mut got = vec![0u8; n];
            mem.read_slice(&mut got, GuestAddress(a)).expect("guest");
            assert_eq!(got, data[at..at + n], "piece at {a:#x}");
            at += n;
        }
        mem.write_slice(&[0xee; 777], GuestAddress(0x11))
            .expect("guest");
        transfer_bounced(file.as_raw_fd(), &slices[..1], 0, Direction::Write).expect("write");
        let after = std::fs::read(&path).expect("file");
        assert_eq!(after[..777], [0xee; 777]);
        assert_eq!(after[777..], data[777..]);
        std::fs::remove_file(path).expect("clean up");
    }

    #[test]
    fn page_aligned_buffers_need_no_bounce() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem");
        let slice = mem.get_slice(GuestAddress(0x1000), 0x2000).expect("slice");
        assert!(aligned(&[slice], 512));
    }
}
