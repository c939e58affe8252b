//! One entropy request, pure over guest memory and an entropy source.

use vm_memory::GuestMemoryMmap;

use super::MAX_REQUEST;
use crate::chain::{Chain, Cursor};
use crate::queue::QueueError;

/// Fills the chain's device-writable buffers (up to [`MAX_REQUEST`] bytes) from `source`
/// and returns how many bytes were written. Device-readable buffers are ignored. If the
/// source fails, nothing is written and the request completes empty.
pub fn fill(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    source: &mut dyn FnMut(&mut [u8]) -> std::io::Result<()>,
) -> Result<u32, QueueError> {
    let len = chain.writable_len().min(MAX_REQUEST as u64) as usize;
    let mut bytes = vec![0u8; len];
    if let Err(e) = source(&mut bytes) {
        log::warn!("virtio-rng: host entropy source failed: {e}");
        return Ok(0);
    }
    Cursor::new(mem, &chain.writable, chain.head).write_all(&bytes, "entropy")?;
    Ok(len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Buffer;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers_up_to_the_cap() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("mem");
        let chain = Chain {
            head: 0,
            readable: vec![Buffer {
                addr: GuestAddress(0),
                len: 8,
            }],
            writable: vec![
                Buffer {
                    addr: GuestAddress(0x1000),
                    len: 4,
                },
                Buffer {
                    addr: GuestAddress(0x10_0000),
                    len: 0x20_0000,
                },
            ],
        };
        let mut source = |b: &mut [u8]| {
            b.fill(0x5a);
            Ok(())
        };
        let n = fill(&mem, &chain, &mut source).expect("fill");
        assert_eq!(n as usize, MAX_REQUEST);
        let mut first = [0u8; 4];
        mem.read_slice(&mut first, GuestAddress(0x1000))
            .expect("read");
        assert_eq!(first, [0x5a; 4]);
        let mut failing = |_: &mut [u8]| Err(std::io::Error::other("no entropy"));
        assert_eq!(fill(&mem, &chain, &mut failing).expect("fill"), 0);
    }
}
