//! One block request, pure over guest memory and a [`Disk`]: header, data, status byte.
//! [`parse`] checks what the driver formed (no header, no status byte: a queue error) on
//! the device's worker; [`run`] carries it out, possibly on an I/O thread, and completes
//! it with a status, as a real disk would answer: an error on the disk or an impossible
//! request is an error status, never a queue error.

use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::ranges::{self, RangeOp};
use super::{Disk, ID_BYTES, SECTOR_SIZE};
use crate::chain::{Buffer, Chain, ChainError, Cursor};
use crate::queue::QueueError;

const HEADER_LEN: usize = 16;

/// What requests run against; cloned to each I/O thread.
#[derive(Clone)]
pub struct RequestContext {
    pub disk: Arc<dyn Disk>,
    pub read_only: bool,
    pub id: [u8; ID_BYTES],
    /// No FLUSH negotiated: the driver expects every write to be durable on completion.
    pub write_through: bool,
}

/// A request whose header and status byte were found.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    kind: u32,
    sector: u64,
    status: GuestAddress,
}

/// Reads the header and finds the status byte of `chain`.
pub fn parse(mem: &GuestMemoryMmap, chain: &Chain) -> Result<Request, QueueError> {
    let head = chain.head;
    let mut reader = Cursor::new(mem, &chain.readable, head);
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header, "request header")?;
    let status = last_writable_byte(chain).ok_or(ChainError::TooShort {
        head,
        what: "status byte",
    })?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    Ok(Request {
        kind,
        sector: u64::from_le_bytes(sector),
        status,
    })
}

/// Carries out `request` and writes its status byte; returns the bytes written into
/// device-writable buffers (the used length).
pub fn run(mem: &GuestMemoryMmap, chain: &Chain, request: &Request, ctx: &RequestContext) -> u32 {
    let data_in = chain.writable_len() - 1;
    let outcome = match request.kind {
        VIRTIO_BLK_T_IN => read(ctx, mem, chain, request.sector, data_in),
        VIRTIO_BLK_T_OUT => write(ctx, mem, chain, request.sector),
        VIRTIO_BLK_T_FLUSH => ctx.disk.flush().map(|_| 0).map_err(Status::io),
        VIRTIO_BLK_T_GET_ID => {
            let n = (data_in as usize).min(ID_BYTES);
            Cursor::new(mem, &chain.writable, chain.head)
                .write_all(&ctx.id[..n], "device ID")
                .map(|_| n as u32)
                .map_err(|_| Status(VIRTIO_BLK_S_IOERR))
        }
        VIRTIO_BLK_T_DISCARD => range_op(ctx, mem, chain, RangeOp::Discard),
        VIRTIO_BLK_T_WRITE_ZEROES => range_op(ctx, mem, chain, RangeOp::WriteZeroes),
        _ => Err(Status(VIRTIO_BLK_S_UNSUPP)),
    };
    let (status, written) = match outcome {
        Ok(n) => (VIRTIO_BLK_S_OK, n),
        Err(Status(code)) => (code, 0),
    };
    if mem.write_obj(status as u8, request.status).is_err() {
        // Checked inside RAM when the chain was parsed: cannot happen.
        log::error!(
            "virtio-blk: cannot write the status of chain {}",
            chain.head
        );
    }
    written + 1
}

/// Runs the request in `chain` at once; returns the bytes written into device-writable
/// buffers.
pub fn execute(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    ctx: &RequestContext,
) -> Result<u32, QueueError> {
    let request = parse(mem, chain)?;
    Ok(run(mem, chain, &request, ctx))
}

/// The status byte a failed request completes with.
struct Status(u32);

impl Status {
    fn io(e: std::io::Error) -> Status {
        log::warn!("virtio-blk: I/O error: {e}");
        Status(VIRTIO_BLK_S_IOERR)
    }
}

/// The byte range `[sector * 512, + len)` if it lies on the disk.
fn disk_range(ctx: &RequestContext, sector: u64, len: u64) -> Result<u64, Status> {
    let capacity = ctx.disk.len() / SECTOR_SIZE * SECTOR_SIZE;
    let start = sector.checked_mul(SECTOR_SIZE);
    match start.and_then(|s| s.checked_add(len)) {
        Some(end) if end <= capacity && len.is_multiple_of(SECTOR_SIZE) => Ok(end - len),
        _ => Err(Status(VIRTIO_BLK_S_IOERR)),
    }
}

/// `len` bytes of guest memory in `buffers` after the first `skip`, as slices (a buffer
/// may span two RAM regions, hence several slices per buffer).
fn data_slices<'m>(
    mem: &'m GuestMemoryMmap,
    buffers: &[Buffer],
    skip: u64,
    len: u64,
) -> Result<Vec<VolatileSlice<'m>>, Status> {
    let broken = || Status(VIRTIO_BLK_S_IOERR);
    let mut slices = Vec::with_capacity(buffers.len());
    let (mut skip, mut left) = (skip, len);
    for buffer in buffers {
        let size = u64::from(buffer.len);
        if skip >= size {
            skip -= size;
            continue;
        }
        let take = (size - skip).min(left);
        let addr = buffer.addr.checked_add(skip).ok_or_else(broken)?;
        let take_bytes = usize::try_from(take).map_err(|_| broken())?;
        for slice in mem.get_slices(addr, take_bytes) {
            slices.push(slice.map_err(|_| broken())?);
        }
        skip = 0;
        left -= take;
        if left == 0 {
            break;
        }
    }
    Ok(slices)
}

/// Reads `len` bytes from the disk straight into the chain's writable buffers.
fn read(
    ctx: &RequestContext,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    sector: u64,
    len: u64,
) -> Result<u32, Status> {
    let used = u32::try_from(len).map_err(|_| Status(VIRTIO_BLK_S_IOERR))?;
    let offset = disk_range(ctx, sector, len)?;
    let bufs = data_slices(mem, &chain.writable, 0, len)?;
    ctx.disk
        .read_vectored_at(&bufs, offset)
        .map_err(Status::io)?;
    Ok(used)
}

/// Writes the chain's readable buffers after the header straight to the disk.
fn write(
    ctx: &RequestContext,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    sector: u64,
) -> Result<u32, Status> {
    if ctx.read_only {
        return Err(Status(VIRTIO_BLK_S_IOERR));
    }
    let header = HEADER_LEN as u64;
    let len = chain.readable_len().saturating_sub(header);
    let offset = disk_range(ctx, sector, len)?;
    let bufs = data_slices(mem, &chain.readable, header, len)?;
    ctx.disk
        .write_vectored_at(&bufs, offset)
        .map_err(Status::io)?;
    if ctx.write_through {
        ctx.disk.flush().map_err(Status::io)?;
    }
    Ok(0)
}

/// DISCARD or WRITE_ZEROES: every segment checked first, then each carried out.
fn range_op(
    ctx: &RequestContext,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    op: RangeOp,
) -> Result<u32, Status> {
    let geometry = ctx.disk.geometry();
    let offered = match op {
        RangeOp::Discard => geometry.discard_granularity.is_some(),
        RangeOp::WriteZeroes => geometry.write_zeroes,
    };
    if !offered {
        return Err(Status(VIRTIO_BLK_S_UNSUPP));
    }
    if ctx.read_only {
        return Err(Status(VIRTIO_BLK_S_IOERR));
    }
    let len = chain.readable_len().saturating_sub(HEADER_LEN as u64);
    let max = (ranges::SEGMENT_LEN as u64) * u64::from(super::config::MAX_RANGE_SEGMENTS);
    // More than the limit is refused by `ranges::parse`; read one segment past it to know.
    let take = len.min(max + ranges::SEGMENT_LEN as u64) as usize;
    let mut data = vec![0u8; take];
    let mut cursor = Cursor::new(mem, &chain.readable, chain.head);
    cursor
        .read_exact(&mut [0u8; HEADER_LEN], "request header")
        .and_then(|()| cursor.read_exact(&mut data, "segments"))
        .map_err(|_| Status(VIRTIO_BLK_S_IOERR))?;
    let capacity = ctx.disk.len() / SECTOR_SIZE * SECTOR_SIZE;
    let list = ranges::parse(&data, op, capacity).map_err(Status)?;
    for range in list {
        match op {
            RangeOp::Discard => ctx.disk.discard(range.offset, range.len),
            RangeOp::WriteZeroes => ctx.disk.write_zeroes(range.offset, range.len, range.unmap),
        }
        .map_err(Status::io)?;
    }
    if ctx.write_through && op == RangeOp::WriteZeroes {
        ctx.disk.flush().map_err(Status::io)?;
    }
    Ok(0)
}

fn last_writable_byte(chain: &Chain) -> Option<GuestAddress> {
    let last = chain.writable.iter().rev().find(|b| b.len > 0)?;
    Some(GuestAddress(last.addr.0 + u64::from(last.len) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Buffer;
    use crate::devices::block::MemDisk;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x9000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem")
    }

    fn request(
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_writable: bool,
    ) -> Chain {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HDR)).expect("header");
        mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        let data = Buffer {
            addr: GuestAddress(DATA),
            len: data_len,
        };
        let status = Buffer {
            addr: GuestAddress(STATUS),
            len: 1,
        };
        let mut chain = Chain {
            head: 0,
            readable: vec![Buffer {
                addr: GuestAddress(HDR),
                len: 16,
            }],
            writable: vec![],
        };
        if data_len > 0 {
            if data_writable {
                chain.writable.push(data);
            } else {
                chain.readable.push(data);
            }
        }
        chain.writable.push(status);
        chain
    }

    fn submit(
        mem: &GuestMemoryMmap,
        chain: &Chain,
        disk: &Arc<MemDisk>,
        read_only: bool,
    ) -> (u32, u8) {
        let ctx = RequestContext {
            disk: disk.clone(),
            read_only,
            id: *b"disk-serial-0\0\0\0\0\0\0\0",
            write_through: false,
        };
        let used = execute(mem, chain, &ctx).expect("well-formed request");
        (used, mem.read_obj(GuestAddress(STATUS)).expect("status"))
    }

    #[test]
    fn write_then_read_back() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(vec![0u8; 8 * 512]));
        m.write_slice(&[0xabu8; 1024], GuestAddress(DATA))
            .expect("data");
        let out = request(&m, VIRTIO_BLK_T_OUT, 2, 1024, false);
        assert_eq!(submit(&m, &out, &disk, false), (1, 0));
        let data = disk.contents();
        assert!(data[1024..2048].iter().all(|b| *b == 0xab));
        assert!(data[..1024].iter().all(|b| *b == 0));
        m.write_slice(&[0u8; 1024], GuestAddress(DATA))
            .expect("clear");
        let inq = request(&m, VIRTIO_BLK_T_IN, 2, 512, true);
        assert_eq!(submit(&m, &inq, &disk, false), (513, 0));
        let mut back = [0u8; 512];
        m.read_slice(&mut back, GuestAddress(DATA)).expect("read");
        assert_eq!(back, [0xab; 512]);
    }

    #[test]
    fn data_sharing_buffers_with_the_header_or_the_status_byte() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(vec![0u8; 8 * 512]));
        // Header and 1024 bytes of data in one readable buffer.
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        header[8..].copy_from_slice(&1u64.to_le_bytes());
        m.write_slice(&header, GuestAddress(HDR)).expect("header");
        m.write_slice(&[0x5au8; 1024], GuestAddress(HDR + 16))
            .expect("data");
        let out = Chain {
            head: 0,
            readable: vec![Buffer {
                addr: GuestAddress(HDR),
                len: 16 + 1024,
            }],
            writable: vec![Buffer {
                addr: GuestAddress(STATUS),
                len: 1,
            }],
        };
        assert_eq!(submit(&m, &out, &disk, false), (1, 0));
        let data = disk.contents();
        assert!(data[512..1536].iter().all(|b| *b == 0x5a));
        assert!(data[..512].iter().all(|b| *b == 0) && data[1536..].iter().all(|b| *b == 0));
        // Read 512 bytes into two pieces, the second ending in the status byte.
        let mut inq = request(&m, VIRTIO_BLK_T_IN, 1, 0, true);
        inq.writable = vec![
            Buffer {
                addr: GuestAddress(DATA),
                len: 200,
            },
            Buffer {
                addr: GuestAddress(STATUS - 312),
                len: 313,
            },
        ];
        assert_eq!(submit(&m, &inq, &disk, false), (513, 0));
        let mut first = [0u8; 200];
        m.read_slice(&mut first, GuestAddress(DATA)).expect("read");
        let mut second = [0u8; 312];
        m.read_slice(&mut second, GuestAddress(STATUS - 312))
            .expect("read");
        assert_eq!((first, second), ([0x5a; 200], [0x5a; 312]));
    }

    #[test]
    fn read_only_and_out_of_range_fail_with_ioerr() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(vec![0u8; 4 * 512]));
        let out = request(&m, VIRTIO_BLK_T_OUT, 0, 512, false);
        assert_eq!(submit(&m, &out, &disk, true).1, VIRTIO_BLK_S_IOERR as u8);
        let past = request(&m, VIRTIO_BLK_T_IN, 3, 1024, true);
        assert_eq!(
            submit(&m, &past, &disk, false),
            (1, VIRTIO_BLK_S_IOERR as u8)
        );
        let huge = request(&m, VIRTIO_BLK_T_IN, u64::MAX / 2, 512, true);
        assert_eq!(submit(&m, &huge, &disk, false).1, VIRTIO_BLK_S_IOERR as u8);
        let odd = request(&m, VIRTIO_BLK_T_IN, 0, 100, true);
        assert_eq!(submit(&m, &odd, &disk, false).1, VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn get_id_flush_and_unknown_types() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(vec![0u8; 512]));
        let id = request(&m, VIRTIO_BLK_T_GET_ID, 0, 20, true);
        assert_eq!(submit(&m, &id, &disk, false), (21, 0));
        let mut serial = [0u8; 13];
        m.read_slice(&mut serial, GuestAddress(DATA)).expect("read");
        assert_eq!(&serial, b"disk-serial-0");
        let flush = request(&m, VIRTIO_BLK_T_FLUSH, 0, 0, true);
        assert_eq!(submit(&m, &flush, &disk, false), (1, 0));
        let unknown = request(&m, 99, 0, 16, false);
        assert_eq!(
            submit(&m, &unknown, &disk, false),
            (1, VIRTIO_BLK_S_UNSUPP as u8)
        );
    }

    fn segment(m: &GuestMemoryMmap, sector: u64, sectors: u32, flags: u32) {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend(sectors.to_le_bytes());
        s.extend(flags.to_le_bytes());
        m.write_slice(&s, GuestAddress(DATA)).expect("segment");
    }

    #[test]
    fn discard_and_write_zeroes_reach_the_disk() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(vec![0x77u8; 8 * 512]));
        segment(&m, 2, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        let zeroes = request(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false);
        assert_eq!(submit(&m, &zeroes, &disk, true).1, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(submit(&m, &zeroes, &disk, false), (1, 0));
        let data = disk.contents();
        assert!(data[1024..2048].iter().all(|b| *b == 0));
        assert!(data[..1024].iter().chain(&data[2048..]).all(|b| *b == 0x77));
        let discard = request(&m, VIRTIO_BLK_T_DISCARD, 0, 16, false);
        assert_eq!(
            submit(&m, &discard, &disk, false).1,
            VIRTIO_BLK_S_UNSUPP as u8,
            "unmap is no discard flag"
        );
        segment(&m, 7, 2, 0);
        assert_eq!(
            submit(&m, &discard, &disk, false).1,
            VIRTIO_BLK_S_IOERR as u8,
            "past the end"
        );
        segment(&m, 6, 2, 0);
        assert_eq!(submit(&m, &discard, &disk, false), (1, 0));
        assert!(disk.contents()[3072..].iter().all(|b| *b == 0));
    }

    /// A disk whose every flush fails, as `fdatasync` does after a lost write.
    struct BrokenFlush(MemDisk);

    impl Disk for BrokenFlush {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read_vectored_at(&self, b: &[VolatileSlice<'_>], o: u64) -> std::io::Result<()> {
            self.0.read_vectored_at(b, o)
        }
        fn write_vectored_at(&self, b: &[VolatileSlice<'_>], o: u64) -> std::io::Result<()> {
            self.0.write_vectored_at(b, o)
        }
        fn flush(&self) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        }
    }

    #[test]
    fn a_failed_flush_is_an_io_error_for_the_guest() {
        let m = mem();
        let ctx = RequestContext {
            disk: Arc::new(BrokenFlush(MemDisk::new(vec![0u8; 1024]))),
            read_only: false,
            id: [0; ID_BYTES],
            write_through: true,
        };
        let flush = request(&m, VIRTIO_BLK_T_FLUSH, 0, 0, true);
        assert_eq!(execute(&m, &flush, &ctx).expect("request"), 1);
        let status: u8 = m.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
        // Without FLUSH negotiated a write is only done once durable.
        let out = request(&m, VIRTIO_BLK_T_OUT, 0, 512, false);
        execute(&m, &out, &ctx).expect("request");
        let status: u8 = m.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn malformed_requests_are_queue_errors() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(vec![0u8; 512]));
        let ctx = RequestContext {
            disk,
            read_only: false,
            id: [0; ID_BYTES],
            write_through: false,
        };
        let mut no_status = request(&m, VIRTIO_BLK_T_IN, 0, 512, true);
        no_status.writable.clear();
        assert!(execute(&m, &no_status, &ctx).is_err());
        let mut short_header = request(&m, VIRTIO_BLK_T_IN, 0, 0, true);
        short_header.readable[0].len = 8;
        assert!(execute(&m, &short_header, &ctx).is_err());
    }
}
