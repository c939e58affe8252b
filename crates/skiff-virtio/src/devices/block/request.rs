//! One block request, pure over guest memory and a [`Disk`]: header, data, status byte.
//! A request the driver formed wrongly (no header, no status byte) is a queue error; a
//! request that fails on the disk or asks for something impossible completes with an error
//! status, as a real disk would answer.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::{Disk, ID_BYTES, SECTOR_SIZE};
use crate::chain::{Buffer, Chain, ChainError, Cursor};
use crate::queue::QueueError;

const HEADER_LEN: usize = 16;

/// What a request runs against.
pub struct RequestContext<'a> {
    pub disk: &'a mut dyn Disk,
    pub read_only: bool,
    pub id: [u8; ID_BYTES],
    /// No FLUSH negotiated: the driver expects every write to be durable on completion.
    pub write_through: bool,
}

/// Runs the request in `chain`; returns the bytes written into device-writable buffers.
pub fn execute(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    ctx: &mut RequestContext<'_>,
) -> Result<u32, QueueError> {
    let head = chain.head;
    let mut reader = Cursor::new(mem, &chain.readable, head);
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header, "request header")?;
    let status_addr = last_writable_byte(chain).ok_or(ChainError::TooShort {
        head,
        what: "status byte",
    })?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector);
    let data_in = chain.writable_len() - 1;

    let outcome = match kind {
        VIRTIO_BLK_T_IN => read(ctx, mem, chain, sector, data_in),
        VIRTIO_BLK_T_OUT => write(ctx, mem, chain, sector),
        VIRTIO_BLK_T_FLUSH => ctx.disk.flush().map(|_| 0).map_err(Status::io),
        VIRTIO_BLK_T_GET_ID => {
            let n = (data_in as usize).min(ID_BYTES);
            Cursor::new(mem, &chain.writable, head)
                .write_all(&ctx.id[..n], "device ID")
                .map(|_| n as u32)
                .map_err(Status::Chain)
        }
        _ => Err(Status::Code(VIRTIO_BLK_S_UNSUPP)),
    };
    let (status, written) = match outcome {
        Ok(n) => (VIRTIO_BLK_S_OK, n),
        Err(Status::Code(code)) => (code, 0),
        Err(Status::Chain(e)) => return Err(e.into()),
    };
    mem.write_obj(status as u8, status_addr)
        .map_err(|_| ChainError::Memory { head })?;
    Ok(written + 1)
}

enum Status {
    Code(u32),
    Chain(ChainError),
}

impl Status {
    fn io(e: std::io::Error) -> Status {
        log::warn!("virtio-blk: I/O error: {e}");
        Status::Code(VIRTIO_BLK_S_IOERR)
    }
}

/// The byte range `[sector * 512, + len)` if it lies on the disk.
fn disk_range(ctx: &RequestContext<'_>, sector: u64, len: u64) -> Result<u64, Status> {
    let capacity = ctx.disk.len() / SECTOR_SIZE * SECTOR_SIZE;
    let start = sector.checked_mul(SECTOR_SIZE);
    match start.and_then(|s| s.checked_add(len)) {
        Some(end) if end <= capacity && len.is_multiple_of(SECTOR_SIZE) => Ok(end - len),
        _ => Err(Status::Code(VIRTIO_BLK_S_IOERR)),
    }
}

/// `len` bytes of guest memory in `buffers` after the first `skip`, as slices (a buffer
/// may span two RAM regions, hence several slices per buffer).
fn data_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &Chain,
    buffers: &[Buffer],
    skip: u64,
    len: u64,
) -> Result<Vec<VolatileSlice<'m>>, Status> {
    let broken = || Status::Chain(ChainError::Memory { head: chain.head });
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
    ctx: &mut RequestContext<'_>,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    sector: u64,
    len: u64,
) -> Result<u32, Status> {
    let used = u32::try_from(len).map_err(|_| Status::Code(VIRTIO_BLK_S_IOERR))?;
    let offset = disk_range(ctx, sector, len)?;
    let bufs = data_slices(mem, chain, &chain.writable, 0, len)?;
    ctx.disk
        .read_vectored_at(&bufs, offset)
        .map_err(Status::io)?;
    Ok(used)
}

/// Writes the chain's readable buffers after the header straight to the disk.
fn write(
    ctx: &mut RequestContext<'_>,
    mem: &GuestMemoryMmap,
    chain: &Chain,
    sector: u64,
) -> Result<u32, Status> {
    if ctx.read_only {
        return Err(Status::Code(VIRTIO_BLK_S_IOERR));
    }
    let header = HEADER_LEN as u64;
    let len = chain.readable_len().saturating_sub(header);
    let offset = disk_range(ctx, sector, len)?;
    let bufs = data_slices(mem, chain, &chain.readable, header, len)?;
    ctx.disk
        .write_vectored_at(&bufs, offset)
        .map_err(Status::io)?;
    if ctx.write_through {
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

    fn run(mem: &GuestMemoryMmap, chain: &Chain, disk: &mut Vec<u8>, read_only: bool) -> (u32, u8) {
        let mut ctx = RequestContext {
            disk,
            read_only,
            id: *b"disk-serial-0\0\0\0\0\0\0\0",
            write_through: false,
        };
        let used = execute(mem, chain, &mut ctx).expect("well-formed request");
        (used, mem.read_obj(GuestAddress(STATUS)).expect("status"))
    }

    #[test]
    fn write_then_read_back() {
        let m = mem();
        let mut disk = vec![0u8; 8 * 512];
        m.write_slice(&[0xabu8; 1024], GuestAddress(DATA))
            .expect("data");
        let out = request(&m, VIRTIO_BLK_T_OUT, 2, 1024, false);
        assert_eq!(run(&m, &out, &mut disk, false), (1, 0));
        assert!(disk[1024..2048].iter().all(|b| *b == 0xab));
        assert!(disk[..1024].iter().all(|b| *b == 0));
        m.write_slice(&[0u8; 1024], GuestAddress(DATA))
            .expect("clear");
        let inq = request(&m, VIRTIO_BLK_T_IN, 2, 512, true);
        assert_eq!(run(&m, &inq, &mut disk, false), (513, 0));
        let mut back = [0u8; 512];
        m.read_slice(&mut back, GuestAddress(DATA)).expect("read");
        assert_eq!(back, [0xab; 512]);
    }

    #[test]
    fn data_sharing_buffers_with_the_header_or_the_status_byte() {
        let m = mem();
        let mut disk = vec![0u8; 8 * 512];
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
        assert_eq!(run(&m, &out, &mut disk, false), (1, 0));
        assert!(disk[512..1536].iter().all(|b| *b == 0x5a));
        assert!(disk[..512].iter().all(|b| *b == 0) && disk[1536..].iter().all(|b| *b == 0));
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
        assert_eq!(run(&m, &inq, &mut disk, false), (513, 0));
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
        let mut disk = vec![0u8; 4 * 512];
        let out = request(&m, VIRTIO_BLK_T_OUT, 0, 512, false);
        assert_eq!(run(&m, &out, &mut disk, true).1, VIRTIO_BLK_S_IOERR as u8);
        let past = request(&m, VIRTIO_BLK_T_IN, 3, 1024, true);
        assert_eq!(
            run(&m, &past, &mut disk, false),
            (1, VIRTIO_BLK_S_IOERR as u8)
        );
        let huge = request(&m, VIRTIO_BLK_T_IN, u64::MAX / 2, 512, true);
        assert_eq!(run(&m, &huge, &mut disk, false).1, VIRTIO_BLK_S_IOERR as u8);
        let odd = request(&m, VIRTIO_BLK_T_IN, 0, 100, true);
        assert_eq!(run(&m, &odd, &mut disk, false).1, VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn get_id_flush_and_unknown_types() {
        let m = mem();
        let mut disk = vec![0u8; 512];
        let id = request(&m, VIRTIO_BLK_T_GET_ID, 0, 20, true);
        assert_eq!(run(&m, &id, &mut disk, false), (21, 0));
        let mut serial = [0u8; 13];
        m.read_slice(&mut serial, GuestAddress(DATA)).expect("read");
        assert_eq!(&serial, b"disk-serial-0");
        let flush = request(&m, VIRTIO_BLK_T_FLUSH, 0, 0, true);
        assert_eq!(run(&m, &flush, &mut disk, false), (1, 0));
        let discard = request(&m, 11, 0, 16, false);
        assert_eq!(
            run(&m, &discard, &mut disk, false),
            (1, VIRTIO_BLK_S_UNSUPP as u8)
        );
    }

    #[test]
    fn malformed_requests_are_queue_errors() {
        let m = mem();
        let mut disk = vec![0u8; 512];
        let mut ctx = RequestContext {
            disk: &mut disk,
            read_only: false,
            id: [0; ID_BYTES],
            write_through: false,
        };
        let mut no_status = request(&m, VIRTIO_BLK_T_IN, 0, 512, true);
        no_status.writable.clear();
        assert!(execute(&m, &no_status, &mut ctx).is_err());
        let mut short_header = request(&m, VIRTIO_BLK_T_IN, 0, 0, true);
        short_header.readable[0].len = 8;
        assert!(execute(&m, &short_header, &mut ctx).is_err());
    }
}
