//! `deflate-flood`: a balloon driver that deflates without pause. Every deflate-queue
//! entry holds a chain of 256 page numbers, and each chain the device returns is made
//! available again at once, for the given time; meanwhile the driver answers the
//! device's requests for statistics, as a guest's kernel does, so the host's figures stay
//! fresh unless the flood starves the device. The host watches its control socket.

use std::time::{Duration, Instant};

use super::cases::Kind;
use super::driver::{Device, Setup, MORE_DATA, QUEUE, STATUS_NEEDS_RESET};
use super::work::{self, BALLOON_F_STATS_VQ};
use super::Outcome;
use crate::error::Result;
use crate::output::event;

const DEFLATE: u16 = 1;
const STATS: u16 = 2;
/// Page numbers per deflate chain.
const PFNS: usize = 256;
/// Where the stats buffer is, after the deflate chains' lists.
const STATS_BUFFER: usize = MORE_DATA + QUEUE as usize * PFNS * 4;
/// How often the driver reports how far it got.
const REPORT_EVERY: Duration = Duration::from_secs(10);

// Statistics tags (virtio 1.x §5.5.6.3).
const TAG_MEMFREE: u16 = 4;
const TAG_MEMTOT: u16 = 5;
const TAG_AVAIL: u16 = 6;

/// The guest's figures as the stats queue carries them: (tag, value) pairs of 10 bytes.
fn write_stats(device: &Device) -> Result<u32> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let figures = [
        (TAG_MEMFREE, kib("MemFree:")),
        (TAG_MEMTOT, kib("MemTotal:")),
        (TAG_AVAIL, kib("MemAvailable:")),
    ];
    for (i, (tag, value)) in figures.iter().enumerate() {
        let at = STATS_BUFFER + 10 * i;
        for (j, b) in tag
            .to_le_bytes()
            .iter()
            .chain(&value.to_le_bytes())
            .enumerate()
        {
            device.mem.write::<u8>(at + j, *b)?;
        }
    }
    Ok(10 * figures.len() as u32)
}

/// Floods the deflate queue for `seconds`; the outcome counts the chains the device
/// returned and the statistics the driver sent.
pub fn deflate_flood(device: &mut Device, seconds: f64) -> Result<Outcome> {
    device.init_with(&Setup {
        features: BALLOON_F_STATS_VQ,
        queues: &[DEFLATE, STATS],
        msix: false,
    })?;
    let stats_len = write_stats(device)?;
    device.desc_on(STATS, 0, device.gpa(STATS_BUFFER), stats_len, 0, 0)?;
    device.post_on(STATS, &[0], None)?;
    // The page numbers of the huge page's own frames: returning them is harmless.
    let first_pfn = (device.gpa(0) >> 12) as u32;
    for head in 0..QUEUE {
        let list = MORE_DATA + usize::from(head) * PFNS * 4;
        for i in 0..PFNS {
            device
                .mem
                .write::<u32>(list + 4 * i, first_pfn + (i % 512) as u32)?;
        }
        device.desc_on(DEFLATE, head, device.gpa(list), (PFNS * 4) as u32, 0, 0)?;
    }
    let heads: Vec<u16> = (0..QUEUE).collect();
    device.post_on(DEFLATE, &heads, None)?;
    event("flood", &[("started", &1)])?;

    let (mut seen, mut stats_seen) = (0u16, 0u16);
    let (mut chains, mut refills) = (0u64, 0u64);
    let start = Instant::now();
    let mut report = start + REPORT_EVERY;
    let limit = Duration::from_secs_f64(seconds);
    let mut needs_reset = false;
    while start.elapsed() < limit {
        let used = device.used_idx_on(DEFLATE)?;
        let mut again = Vec::new();
        while seen != used {
            let (head, _) = device.used_on(DEFLATE, seen)?;
            again.push(head as u16 % QUEUE);
            seen = seen.wrapping_add(1);
        }
        chains += again.len() as u64;
        if !again.is_empty() {
            device.post_on(DEFLATE, &again, None)?;
        }
        let stats_used = device.used_idx_on(STATS)?;
        if stats_used != stats_seen {
            stats_seen = stats_used;
            write_stats(device)?;
            device.post_on(STATS, &[0], None)?;
            refills += 1;
        }
        if Instant::now() >= report {
            report += REPORT_EVERY;
            needs_reset = device.status()? & STATUS_NEEDS_RESET != 0;
            let elapsed = format!("{:.0}", start.elapsed().as_secs_f64());
            event(
                "flood",
                &[
                    ("elapsed_s", &elapsed),
                    ("deflate_chains", &chains),
                    ("stats_sent", &refills),
                ],
            )?;
            if needs_reset {
                break;
            }
        }
    }
    needs_reset |= device.status()? & STATUS_NEEDS_RESET != 0;
    let recovered = work::works(device, Kind::Balloon)?;
    let mut o = Outcome::new(chains > 0 && refills > 0 && !needs_reset && recovered);
    o.field("seconds", format!("{:.0}", start.elapsed().as_secs_f64()))
        .field("deflate_chains", chains)
        .field("stats_sent", refills)
        .flag("needs_reset", needs_reset)
        .flag("recovered", recovered);
    Ok(o)
}
