//! Descriptor chains, checked before a device touches them: every buffer inside guest RAM,
//! device-readable buffers before device-writable ones, a bounded length, and a proper end
//! (virtio-queue's iterator stops silently on a loop or a bad index; we call that broken).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

/// Why a chain was refused. Any of these means a buggy or hostile driver.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor chain {head} is empty, loops, or points outside its table")]
    Broken { head: u16 },
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain {head}: a device-readable buffer follows a device-writable one")]
    Order { head: u16 },
    #[error("descriptor chain {head} has more than {max} buffers")]
    TooLong { head: u16, max: usize },
    #[error("descriptor chain {head} is too short for a {what}")]
    TooShort { head: u16, what: &'static str },
    #[error("guest memory access failed in chain {head}")]
    Memory { head: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated chain: its head (for the used ring) and its buffers by direction.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

impl Chain {
    /// Walks and checks `chain` against `mem`, refusing more than `max_buffers` buffers.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        max_buffers: usize,
    ) -> Result<Chain, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut parsed = Chain {
            head,
            ..Chain::default()
        };
        let mut ended = false;
        let mut count = 0;
        for desc in chain {
            count += 1;
            if count > max_buffers {
                return Err(ChainError::TooLong {
                    head,
                    max: max_buffers,
                });
            }
            let buffer = Buffer {
                addr: desc.addr(),
                len: desc.len(),
            };
            if !GuestMemoryBackend::check_range(mem, buffer.addr, buffer.len as usize) {
                return Err(ChainError::OutOfRange {
                    head,
                    addr: buffer.addr.0,
                    len: buffer.len,
                });
            }
            if desc.is_write_only() {
                parsed.writable.push(buffer);
            } else if parsed.writable.is_empty() {
                parsed.readable.push(buffer);
            } else {
                return Err(ChainError::Order { head });
            }
            ended = !desc.has_next();
        }
        if !ended {
            return Err(ChainError::Broken { head });
        }
        Ok(parsed)
    }

    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }
}

/// A position in a list of buffers, read or written in order.
pub struct Cursor<'a> {
    mem: &'a GuestMemoryMmap,
    buffers: &'a [Buffer],
    head: u16,
    index: usize,
    offset: u32,
}

impl<'a> Cursor<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, buffers: &'a [Buffer], head: u16) -> Self {
        Cursor {
            mem,
            buffers,
            head,
            index: 0,
            offset: 0,
        }
    }

    /// Bytes left from the current position.
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self.buffers[self.index.min(self.buffers.len())..]
            .iter()
            .map(|b| u64::from(b.len))
            .sum();
        rest - u64::from(self.offset)
    }

    /// Fills `out` from guest memory; fails if the buffers hold fewer bytes.
    pub fn read_exact(&mut self, out: &mut [u8], what: &'static str) -> Result<(), ChainError> {
        let mut done = 0;
        while done < out.len() {
            let (addr, n) = self.next_span(out.len() - done, what)?;
            self.mem
                .read_slice(&mut out[done..done + n], addr)
                .map_err(|_| ChainError::Memory { head: self.head })?;
            done += n;
        }
        Ok(())
    }

    /// Copies `data` to guest memory; fails if the buffers hold fewer bytes.
    pub fn write_all(&mut self, data: &[u8], what: &'static str) -> Result<(), ChainError> {
        let mut done = 0;
        while done < data.len() {
            let (addr, n) = self.next_span(data.len() - done, what)?;
            self.mem
                .write_slice(&data[done..done + n], addr)
                .map_err(|_| ChainError::Memory { head: self.head })?;
            done += n;
        }
        Ok(())
    }

    /// The next contiguous span of at most `want` bytes, consumed.
    fn next_span(
        &mut self,
        want: usize,
        what: &'static str,
    ) -> Result<(GuestAddress, usize), ChainError> {
        loop {
            let buffer = self.buffers.get(self.index).ok_or(ChainError::TooShort {
                head: self.head,
                what,
            })?;
            let left = buffer.len - self.offset;
            if left == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = (left as usize).min(want);
            let addr = GuestAddress(buffer.addr.0 + u64::from(self.offset));
            self.offset += n as u32;
            return Ok((addr, n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem")
    }

    fn parse_raw(
        mem: &GuestMemoryMmap,
        descs: &[(u64, u32, u16, u16)],
    ) -> Result<Chain, ChainError> {
        let vq = MockSplitQueue::new(mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f, n)| RawDescriptor::from(Descriptor::new(a, l, f, n)))
            .collect();
        vq.add_desc_chains(&raw, 0).expect("chain");
        let mut q: virtio_queue::Queue = vq.create_queue().expect("queue");
        let chain = q.pop_descriptor_chain(mem).expect("a chain");
        Chain::parse(chain, mem, 8)
    }

    #[test]
    fn accepts_readable_then_writable() {
        let m = mem();
        let chain = parse_raw(
            &m,
            &[
                (0x1000, 16, NEXT, 1),
                (0x2000, 512, NEXT | WRITE, 2),
                (0x3000, 1, WRITE, 0),
            ],
        )
        .expect("valid");
        assert_eq!(chain.readable.len(), 1);
        assert_eq!(chain.writable.len(), 2);
        assert_eq!((chain.readable_len(), chain.writable_len()), (16, 513));
    }

    #[test]
    fn refuses_malformed_chains() {
        let m = mem();
        let out = parse_raw(&m, &[(0x1000, 16, NEXT, 1), (0xff_f000, 0x2000, WRITE, 0)]);
        assert!(matches!(out, Err(ChainError::OutOfRange { .. })), "{out:?}");
        let order = parse_raw(&m, &[(0x1000, 16, WRITE | NEXT, 1), (0x2000, 16, 0, 0)]);
        assert!(matches!(order, Err(ChainError::Order { .. })), "{order:?}");
        // A loop: 0 -> 1 -> 0 ...; virtio-queue gives up after the queue size.
        let looped = parse_raw(&m, &[(0x1000, 16, NEXT, 1), (0x2000, 16, NEXT, 0)]);
        assert!(matches!(
            looped,
            Err(ChainError::Broken { .. }) | Err(ChainError::TooLong { .. })
        ));
        let long: Vec<_> = (0..10u16)
            .map(|i| (0x1000, 8, NEXT, i + 1))
            .chain([(0x1000, 8, 0, 0)])
            .collect();
        assert!(matches!(
            parse_raw(&m, &long),
            Err(ChainError::TooLong { .. })
        ));
        let bad_next = parse_raw(&m, &[(0x1000, 16, NEXT, 200)]);
        assert!(
            matches!(bad_next, Err(ChainError::Broken { .. })),
            "{bad_next:?}"
        );
    }

    #[test]
    fn cursor_spans_buffers_and_stops_at_the_end() {
        let m = mem();
        let bufs = [
            Buffer {
                addr: GuestAddress(0x1000),
                len: 3,
            },
            Buffer {
                addr: GuestAddress(0x2000),
                len: 0,
            },
            Buffer {
                addr: GuestAddress(0x3000),
                len: 5,
            },
        ];
        let mut w = Cursor::new(&m, &bufs, 0);
        assert_eq!(w.remaining(), 8);
        w.write_all(&[1, 2, 3, 4, 5, 6], "data").expect("fits");
        assert_eq!(w.remaining(), 2);
        assert!(w.write_all(&[0; 3], "status").is_err());
        let mut r = Cursor::new(&m, &bufs, 0);
        let mut back = [0u8; 6];
        r.read_exact(&mut back, "data").expect("read");
        assert_eq!(back, [1, 2, 3, 4, 5, 6]);
    }
}
