//! One well-formed piece of work per kind of device, on the queue that kind uses for it:
//! entropy (rng), reading sector 0 (blk), sending a small frame (net), deflating one page
//! (balloon). The transport cases use it to keep a device busy and to show afterwards
//! that it still works.

use super::cases::{self, Kind};
use super::driver::{wait, Device, Setup, MORE_DATA, QUEUE, STATUS_NEEDS_RESET};
use crate::error::{Error, Result};

/// virtio-net's header with VERSION_1 (virtio 1.x §5.1.6): 12 bytes.
pub const NET_HDR: usize = 12;
/// virtio-balloon's stats queue feature.
pub const BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// Where a transmitted frame or deflated PFN list is built.
const BUFFER: usize = MORE_DATA;
/// A minimal Ethernet frame after the header: broadcast, from a local MAC, a local
/// experimental EtherType (0x88b5), padded to 60 bytes.
const FRAME_LEN: usize = 60;

/// The queue a kind's work goes to.
pub fn work_queue(kind: Kind) -> u16 {
    match kind {
        Kind::Rng | Kind::Block => 0,
        // transmitq; deflateq.
        Kind::Net | Kind::Balloon => 1,
    }
}

/// Resets and sets the device up for its work (and, with `msix`, MSI-X vectors on).
pub fn init(device: &mut Device, kind: Kind, msix: bool) -> Result<()> {
    device.init_with(&Setup {
        features: 0,
        queues: &[work_queue(kind)],
        msix,
    })
}

/// Builds one piece of work in descriptor `head` and makes it available.
pub fn submit(device: &mut Device, kind: Kind, head: u16) -> Result<()> {
    let q = work_queue(kind);
    match kind {
        Kind::Rng | Kind::Block => {
            let post = cases::good_request(device, kind)?;
            device.post(&post.heads, None)
        }
        Kind::Net => {
            let at = BUFFER;
            for i in 0..NET_HDR + FRAME_LEN {
                device.mem.write::<u8>(at + i, 0)?;
            }
            let frame = at + NET_HDR;
            for i in 0..6 {
                device.mem.write::<u8>(frame + i, 0xff)?;
            }
            for (i, b) in [0x52u8, 0x54, 0x00, 0xab, 0xcd, 0xef].iter().enumerate() {
                device.mem.write::<u8>(frame + 6 + i, *b)?;
            }
            device.mem.write::<u8>(frame + 12, 0x88)?;
            device.mem.write::<u8>(frame + 13, 0xb5)?;
            let len = (NET_HDR + FRAME_LEN) as u32;
            device.desc_on(q, head % QUEUE, device.gpa(at), len, 0, 0)?;
            device.post_on(q, &[head % QUEUE], None)
        }
        Kind::Balloon => {
            // A page of the tool's own buffer: deflating it tells the host nothing new.
            let pfn = (device.gpa(BUFFER) >> 12) as u32;
            device.mem.write::<u32>(BUFFER + 0x1000, pfn)?;
            device.desc_on(q, head % QUEUE, device.gpa(BUFFER + 0x1000), 4, 0, 0)?;
            device.post_on(q, &[head % QUEUE], None)
        }
    }
}

/// Whether the work the device completed last succeeded (block status 0, entropy that is
/// not all zeros; a sent frame or deflated page succeeds by being returned).
pub fn succeeded(device: &Device, kind: Kind) -> Result<bool> {
    match kind {
        Kind::Rng | Kind::Block => Ok(cases::good_result(device, kind)?.1),
        Kind::Net | Kind::Balloon => Ok(true),
    }
}

/// Resets the device, sets it up and has it do one piece of work: whether it did, in
/// [`super::REACTION`], without asking for a reset.
pub fn works(device: &mut Device, kind: Kind) -> Result<bool> {
    init(device, kind, false)?;
    submit(device, kind, 0)?;
    let q = work_queue(kind);
    let answered = wait(super::REACTION, || Ok(device.used_idx_on(q)? == 1))?;
    Ok(answered && succeeded(device, kind)? && device.status()? & STATUS_NEEDS_RESET == 0)
}

/// The kind of the virtio function at `address`, from its PCI device ID.
pub fn device_kind(address: &str) -> Result<Kind> {
    let path = format!("/sys/bus/pci/devices/{address}/device");
    let id =
        std::fs::read_to_string(&path).map_err(|e| Error::runtime(format!("read {path}: {e}")))?;
    match id.trim() {
        "0x1044" => Ok(Kind::Rng),
        "0x1042" => Ok(Kind::Block),
        "0x1041" => Ok(Kind::Net),
        "0x1045" => Ok(Kind::Balloon),
        other => Err(Error::usage(format!(
            "{address} is device {other}; virtio-abuse knows virtio-rng (0x1044), virtio-blk \
             (0x1042), virtio-net (0x1041) and virtio-balloon (0x1045)"
        ))),
    }
}
