//! The malformed requests, one per way a driver can break the rules, each with what a
//! robust device must do about it, and the well-formed request that shows a device works.

use super::driver::{
    Device, DATA, DESC_F_INDIRECT as INDIRECT, DESC_F_NEXT as NEXT, DESC_F_WRITE as WRITE,
    INDIRECT as TABLE, QUEUE,
};
use crate::error::Result;

/// Which device a case needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rng,
    Block,
    Net,
    Balloon,
}

impl Kind {
    /// Whether the malformed-chain cases (on queue 0) are for this device.
    pub fn takes_chains(self) -> bool {
        matches!(self, Kind::Rng | Kind::Block)
    }
}

/// What the device must do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Refuse it: DEVICE_NEEDS_RESET and a configuration interrupt.
    NeedsReset,
    /// Complete it (it is odd, not malformed), writing this many bytes (and, for a block
    /// request, this status byte).
    Completes {
        used_len: u32,
        block_status: Option<u8>,
    },
}

/// What to make available: these heads, and optionally an avail index of the test's
/// choosing instead of the honest one.
pub struct Post {
    pub heads: Vec<u16>,
    pub avail_idx: Option<u16>,
}

impl Post {
    fn head0() -> Post {
        Post {
            heads: vec![0],
            avail_idx: None,
        }
    }
}

pub struct Case {
    pub name: &'static str,
    /// `None`: any device.
    pub only: Option<Kind>,
    pub expect: Expect,
    pub build: fn(&Device) -> Result<Post>,
}

/// Far above any test guest's RAM.
const OUTSIDE_RAM: u64 = 1 << 40;
/// Where block requests keep their header, data and status byte.
const HEADER: usize = DATA;
const SECTOR: usize = DATA + 0x1000;
const STATUS: usize = DATA + 0x2000;

pub const CASES: &[Case] = &[
    Case {
        name: "outside-ram",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| one(d, OUTSIDE_RAM, 64, WRITE),
    },
    Case {
        name: "device-own-bar",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| one(d, d.bar_address()?, 64, WRITE),
    },
    Case {
        name: "length-past-ram",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| one(d, d.gpa(DATA), 0xffff_f000, WRITE),
    },
    Case {
        name: "address-wraps",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| one(d, u64::MAX - 0xff, 0x1000, WRITE),
    },
    Case {
        name: "next-loop",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            d.desc(0, d.gpa(DATA), 16, WRITE | NEXT, 1)?;
            d.desc(1, d.gpa(DATA + 16), 16, WRITE | NEXT, 0)?;
            Ok(Post::head0())
        },
    },
    Case {
        name: "next-outside-table",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            d.desc(0, d.gpa(DATA), 16, WRITE | NEXT, 200)?;
            Ok(Post::head0())
        },
    },
    Case {
        name: "head-outside-table",
        only: None,
        expect: Expect::NeedsReset,
        build: |_| {
            Ok(Post {
                heads: vec![QUEUE + 84],
                avail_idx: None,
            })
        },
    },
    Case {
        name: "avail-idx-jump",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            d.desc(0, d.gpa(DATA), 16, WRITE, 0)?;
            Ok(Post {
                heads: vec![0],
                avail_idx: Some(QUEUE + 1),
            })
        },
    },
    Case {
        name: "readable-after-writable",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            d.desc(0, d.gpa(DATA), 16, WRITE | NEXT, 1)?;
            d.desc(1, d.gpa(DATA + 16), 16, 0, 0)?;
            Ok(Post::head0())
        },
    },
    Case {
        // 300 descriptors: more than the queue, and more than any device accepts (256).
        name: "indirect-too-long",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            const N: u16 = 300;
            for i in 0..N {
                let (flags, next) = if i + 1 < N {
                    (WRITE | NEXT, i + 1)
                } else {
                    (WRITE, 0)
                };
                d.indirect(usize::from(i), d.gpa(DATA), 8, flags, next)?;
            }
            one(d, d.gpa(TABLE), u32::from(N) * 16, INDIRECT)
        },
    },
    Case {
        name: "indirect-nested",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            d.indirect(0, d.gpa(TABLE + 0x1000), 16, INDIRECT, 0)?;
            one(d, d.gpa(TABLE), 32, INDIRECT)
        },
    },
    Case {
        name: "indirect-odd-size",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| {
            d.indirect(0, d.gpa(DATA), 16, WRITE, 0)?;
            one(d, d.gpa(TABLE), 20, INDIRECT)
        },
    },
    Case {
        name: "indirect-outside-ram",
        only: None,
        expect: Expect::NeedsReset,
        build: |d| one(d, OUTSIDE_RAM, 64, INDIRECT),
    },
    Case {
        // Odd but legal: an empty buffer gets no entropy.
        name: "zero-length",
        only: Some(Kind::Rng),
        expect: Expect::Completes {
            used_len: 0,
            block_status: None,
        },
        build: |d| one(d, d.gpa(DATA), 0, WRITE),
    },
    Case {
        // The request header must be device-readable.
        name: "header-write-only",
        only: Some(Kind::Block),
        expect: Expect::NeedsReset,
        build: |d| {
            block_header(d, 0)?;
            d.desc(0, d.gpa(HEADER), 16, WRITE | NEXT, 1)?;
            d.desc(1, d.gpa(STATUS), 1, WRITE, 0)?;
            Ok(Post::head0())
        },
    },
    Case {
        name: "no-status-byte",
        only: Some(Kind::Block),
        expect: Expect::NeedsReset,
        build: |d| {
            block_header(d, 0)?;
            d.desc(0, d.gpa(HEADER), 16, NEXT, 1)?;
            d.desc(1, d.gpa(SECTOR), 512, 0, 0)?;
            Ok(Post::head0())
        },
    },
    Case {
        name: "short-header",
        only: Some(Kind::Block),
        expect: Expect::NeedsReset,
        build: |d| {
            block_header(d, 0)?;
            d.desc(0, d.gpa(HEADER), 8, NEXT, 1)?;
            d.desc(1, d.gpa(STATUS), 1, WRITE, 0)?;
            Ok(Post::head0())
        },
    },
    Case {
        // Well-formed but impossible: an I/O error status, not a broken device.
        name: "sector-past-end",
        only: Some(Kind::Block),
        expect: Expect::Completes {
            used_len: 1,
            block_status: Some(VIRTIO_BLK_S_IOERR),
        },
        build: |d| {
            block_header(d, 1 << 40)?;
            block_read_chain(d)
        },
    },
];

/// A chain of one descriptor.
fn one(d: &Device, addr: u64, len: u32, flags: u16) -> Result<Post> {
    d.desc(0, addr, len, flags, 0)?;
    Ok(Post::head0())
}

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;

fn block_header(d: &Device, sector: u64) -> Result<()> {
    d.mem.write::<u32>(HEADER, VIRTIO_BLK_T_IN)?;
    d.mem.write::<u32>(HEADER + 4, 0)?;
    d.mem.write::<u64>(HEADER + 8, sector)?;
    d.mem.write::<u8>(STATUS, 0xff)
}

/// header (readable), 512 bytes of data and the status byte (writable).
fn block_read_chain(d: &Device) -> Result<Post> {
    d.desc(0, d.gpa(HEADER), 16, NEXT, 1)?;
    d.desc(1, d.gpa(SECTOR), 512, WRITE | NEXT, 2)?;
    d.desc(2, d.gpa(STATUS), 1, WRITE, 0)?;
    Ok(Post::head0())
}

/// The block device's status byte after a request.
pub fn block_status(d: &Device) -> Result<u8> {
    d.mem.read(STATUS)
}

/// A request every working device completes: 64 bytes of entropy, or sector 0.
pub fn good_request(d: &Device, kind: Kind) -> Result<Post> {
    match kind {
        Kind::Block => {
            block_header(d, 0)?;
            block_read_chain(d)
        }
        // Only rng and blk take the chain cases.
        Kind::Rng | Kind::Net | Kind::Balloon => one(d, d.gpa(DATA), 64, WRITE),
    }
}

/// What the good request returned: the first 16 bytes of data, and whether the device
/// said it succeeded (block status byte 0; for entropy, bytes that are not all zero).
pub fn good_result(d: &Device, kind: Kind) -> Result<([u8; 16], bool)> {
    let mut head = [0u8; 16];
    match kind {
        Kind::Rng | Kind::Net | Kind::Balloon => {
            d.mem.read_bytes(DATA, &mut head)?;
            Ok((head, head.iter().any(|b| *b != 0)))
        }
        Kind::Block => {
            d.mem.read_bytes(SECTOR, &mut head)?;
            Ok((head, block_status(d)? == 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_each_device_gets_the_common_ones() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
        let common = CASES.iter().filter(|c| c.only.is_none()).count();
        assert!(common >= 10);
        for kind in [Kind::Rng, Kind::Block] {
            assert!(CASES.iter().any(|c| c.only == Some(kind)));
        }
    }
}
