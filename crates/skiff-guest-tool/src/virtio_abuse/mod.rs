//! `virtio-abuse`: drives a virtio-pci device from user space, with its kernel driver
//! unbound, and hands it malformed descriptor chains, to show end to end (real guest, real
//! VMM) that a device refuses them with DEVICE_NEEDS_RESET and a configuration interrupt,
//! ignores its queue until reset, and works again after a reset — while the VMM and the
//! other devices carry on. The kernel's own drivers never build such chains.
//!
//! One line per case: `case name=.. expect=.. status=0x.. needs_reset=0|1 isr_config=0|1
//! used=N ignored_while_broken=0|1 recovered=0|1 data=HEX [other_sha256=..]`.

mod cases;
mod driver;
mod map;
mod pci;

use std::path::Path;
use std::time::Duration;

use cases::{good_request, good_result, Expect, Kind, CASES};
use driver::{wait, Device, ISR_CONFIG, STATUS_NEEDS_RESET};

use crate::error::{Error, Result};
use crate::fileio::sha256_hex;
use crate::output::{event, hex};

/// How long a device may take to react to a notification (the emulated host is slow).
const REACTION: Duration = Duration::from_secs(5);
/// How long a broken device is watched for (wrongly) answering a request.
const IGNORED_FOR: Duration = Duration::from_millis(300);
/// Bytes of the other disk read after each case.
const OTHER_BYTES: usize = 64 * 1024;

/// The case names, for usage messages.
pub fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

/// Runs `names` (or every case the device supports, for `all`) against the virtio device
/// at PCI `address`; after each, reads `other` (another disk) to show it still works.
/// Fails if any case did not end as expected.
pub fn run(address: &str, names: &[String], other: Option<&Path>) -> Result<()> {
    let kind = device_kind(address)?;
    let chosen: Vec<_> = if names.iter().any(|n| n == "all") {
        CASES
            .iter()
            .filter(|c| c.only.is_none_or(|k| k == kind))
            .collect()
    } else {
        let mut v = Vec::new();
        for n in names {
            let case = CASES.iter().find(|c| c.name == n).ok_or_else(|| {
                Error::usage(format!("no case {n:?}: {}", case_names().join(" ")))
            })?;
            if case.only.is_some_and(|k| k != kind) {
                return Err(Error::usage(format!(
                    "case {n} is not for a {kind:?} device"
                )));
            }
            v.push(case);
        }
        v
    };
    let mut device = Device::open(address)?;
    let mut failed = Vec::new();
    for case in chosen {
        if !run_case(&mut device, kind, case, other)? {
            failed.push(case.name);
        }
    }
    // Leave the device reset, ready for its kernel driver to be bound again.
    device.reset()?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::runtime(format!(
            "cases not handled as expected: {}",
            failed.join(" ")
        )))
    }
}

fn device_kind(address: &str) -> Result<Kind> {
    let path = format!("/sys/bus/pci/devices/{address}/device");
    let id =
        std::fs::read_to_string(&path).map_err(|e| Error::runtime(format!("read {path}: {e}")))?;
    match id.trim() {
        "0x1044" => Ok(Kind::Rng),
        "0x1042" => Ok(Kind::Block),
        other => Err(Error::usage(format!(
            "{address} is device {other}; virtio-abuse knows virtio-rng (0x1044) and virtio-blk (0x1042)"
        ))),
    }
}

/// One case: set up, post the chain, watch the outcome, check the device ignores its
/// queue while broken, reset and show it works again. True if all went as expected.
fn run_case(
    device: &mut Device,
    kind: Kind,
    case: &cases::Case,
    other: Option<&Path>,
) -> Result<bool> {
    device.init()?;
    let post = (case.build)(device)?;
    device.post(&post.heads, post.avail_idx)?;
    wait(REACTION, || {
        Ok(device.status()? & STATUS_NEEDS_RESET != 0 || device.used_idx()? != 0)
    })?;
    let status = device.status()?;
    let needs_reset = status & STATUS_NEEDS_RESET != 0;
    let isr_config = device.isr()? & ISR_CONFIG != 0;
    let used = device.used_idx()?;
    let (_, used_len) = device.used(0)?;
    let block_status = match kind {
        Kind::Block => Some(cases::block_status(device)?),
        Kind::Rng => None,
    };

    let mut ignored_while_broken = false;
    if needs_reset {
        let good = good_request(device, kind)?;
        device.post(&good.heads, None)?;
        std::thread::sleep(IGNORED_FOR);
        ignored_while_broken =
            device.used_idx()? == used && device.status()? & STATUS_NEEDS_RESET != 0;
    }

    device.init()?;
    let good = good_request(device, kind)?;
    device.post(&good.heads, None)?;
    let answered = wait(REACTION, || Ok(device.used_idx()? == 1))?;
    let (data, ok) = good_result(device, kind)?;
    let recovered = answered && ok && device.status()? & STATUS_NEEDS_RESET == 0;

    let as_expected = match case.expect {
        Expect::NeedsReset => needs_reset && isr_config && used == 0 && ignored_while_broken,
        Expect::Completes {
            used_len: want,
            block_status: want_status,
        } => {
            !needs_reset
                && !isr_config
                && used == 1
                && used_len == want
                && (want_status.is_none() || want_status == block_status)
        }
    } && recovered;
    let expect = match case.expect {
        Expect::NeedsReset => "needs-reset",
        Expect::Completes { .. } => "completes",
    };
    let flag = |b: bool| u8::from(b);
    let status_hex = format!("{status:#04x}");
    let data_hex = hex(&data);
    let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![
        ("name", &case.name),
        ("expect", &expect),
        ("status", &status_hex),
    ];
    let (nr, ic, ib, rc, ok) = (
        flag(needs_reset),
        flag(isr_config),
        flag(ignored_while_broken),
        flag(recovered),
        flag(as_expected),
    );
    fields.extend([
        ("needs_reset", &nr as &dyn std::fmt::Display),
        ("isr_config", &ic),
        ("used", &used),
        ("used_len", &used_len),
        ("ignored_while_broken", &ib),
        ("recovered", &rc),
        ("data", &data_hex),
    ]);
    let other_sha = match other {
        Some(path) => Some(read_other(path)?),
        None => None,
    };
    if let Some(sha) = &other_sha {
        fields.push(("other_sha256", sha));
    }
    fields.push(("ok", &ok));
    event("case", &fields)?;
    Ok(as_expected)
}

/// The first [`OTHER_BYTES`] of another disk, read past the page cache (dropped first), so
/// the read really goes to that disk's device.
fn read_other(path: &Path) -> Result<String> {
    use std::io::Read;
    std::fs::write("/proc/sys/vm/drop_caches", "1")
        .map_err(|e| Error::runtime(format!("drop caches: {e}")))?;
    let mut buf = vec![0u8; OTHER_BYTES];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::runtime(format!("read {}: {e}", path.display())))?;
    Ok(sha256_hex(&buf))
}
