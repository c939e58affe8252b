//! `virtio-abuse`: drives a virtio-pci device from user space, with its kernel driver
//! unbound, the way a hostile guest kernel could, to show end to end (real guest, real
//! VMM) that the VMM survives it and the device works again after a reset — while the
//! other devices carry on. Chain cases (cases.rs) hand it malformed descriptor chains,
//! which it must refuse with DEVICE_NEEDS_RESET and a configuration interrupt, ignoring
//! its queue until reset; net-tx-LEN cases send odd frame lengths (net_frames.rs); the
//! transport cases (transport.rs) write DRIVER_OK twice, storm its MSI-X vectors and move
//! its BAR over another device's; deflate-flood floods a balloon (flood.rs). The kernel's
//! own drivers never do any of this.
//!
//! One line per case: `case name=.. ok=0|1 FIELD=..` (chain cases: `expect=.. status=0x..
//! needs_reset=0|1 isr_config=0|1 used=N ignored_while_broken=0|1 recovered=0|1 data=HEX`),
//! then `other_sha256=..` with `--other`.

mod cases;
mod driver;
mod flood;
mod map;
mod net_frames;
mod pci;
mod transport;
mod work;

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use cases::{good_request, good_result, Expect, Kind, CASES};
use driver::{wait, Device, ISR_CONFIG, STATUS_NEEDS_RESET};

use crate::error::{Error, Result};
use crate::fileio::sha256_hex;
use crate::output::{event, hex};

/// What `run` takes besides the device and the cases.
pub struct Options<'a> {
    /// Another disk, read after every case.
    pub other: Option<&'a Path>,
    /// The device whose BAR `bar-over-bar` moves this one's over.
    pub over: Option<&'a str>,
    /// How long `deflate-flood` lasts.
    pub seconds: f64,
}

/// Whether a case went as expected, and what it saw, in order.
pub struct Outcome {
    ok: bool,
    fields: Vec<(&'static str, String)>,
}

impl Outcome {
    fn new(ok: bool) -> Self {
        Outcome {
            ok,
            fields: Vec::new(),
        }
    }

    fn field(&mut self, key: &'static str, value: impl Display) -> &mut Self {
        self.fields.push((key, value.to_string()));
        self
    }

    fn flag(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.field(key, u8::from(value))
    }
}

/// The cases that are not malformed chains, with the device they need (`None`: any).
const TRANSPORT_CASES: &[(&str, Option<Kind>)] = &[
    ("driver-ok-twice", None),
    ("msix-storm", None),
    ("bar-over-bar", None),
    ("deflate-flood", Some(Kind::Balloon)),
];

/// How long a device may take to react to a notification (the emulated host is slow).
pub const REACTION: Duration = Duration::from_secs(5);
/// How long a broken device is watched for (wrongly) answering a request.
const IGNORED_FOR: Duration = Duration::from_millis(300);
/// Bytes of the other disk read after each case.
const OTHER_BYTES: usize = 64 * 1024;

/// The case names, for usage messages.
pub fn case_names() -> Vec<String> {
    CASES
        .iter()
        .map(|c| c.name.to_string())
        .chain(TRANSPORT_CASES.iter().map(|(n, _)| n.to_string()))
        .chain(
            net_frames::LENGTHS
                .iter()
                .map(|l| net_frames::case_name(*l)),
        )
        .collect()
}

/// A case chosen on the command line.
enum Chosen {
    Chain(&'static cases::Case),
    Other(String),
}

fn choose(kind: Kind, names: &[String]) -> Result<Vec<Chosen>> {
    if names.iter().any(|n| n == "all") {
        if !kind.takes_chains() {
            return Err(Error::usage(format!(
                "'all' (the chain cases) is for rng and blk devices, not {kind:?}"
            )));
        }
        return Ok(CASES
            .iter()
            .filter(|c| c.only.is_none_or(|k| k == kind))
            .map(Chosen::Chain)
            .collect());
    }
    let mut v = Vec::new();
    for n in names {
        let not_for = || Error::usage(format!("case {n} is not for a {kind:?} device"));
        if let Some(case) = CASES.iter().find(|c| c.name == n) {
            if case.only.is_some_and(|k| k != kind) || !kind.takes_chains() {
                return Err(not_for());
            }
            v.push(Chosen::Chain(case));
        } else if let Some((_, only)) = TRANSPORT_CASES.iter().find(|(name, _)| name == n) {
            if only.is_some_and(|k| k != kind) {
                return Err(not_for());
            }
            v.push(Chosen::Other(n.clone()));
        } else if net_frames::case_length(n).is_some() {
            if kind != Kind::Net {
                return Err(not_for());
            }
            v.push(Chosen::Other(n.clone()));
        } else {
            return Err(Error::usage(format!(
                "no case {n:?}: {}",
                case_names().join(" ")
            )));
        }
    }
    Ok(v)
}

/// Runs `names` (or every chain case the device supports, for `all`) against the virtio
/// device at PCI `address`; after each, reads `options.other` (another disk) to show it
/// still works. Fails if any case did not end as expected.
pub fn run(address: &str, names: &[String], options: &Options) -> Result<()> {
    let kind = work::device_kind(address)?;
    let chosen = choose(kind, names)?;
    if names.iter().any(|n| n == "bar-over-bar") && options.over.is_none() {
        return Err(Error::usage("bar-over-bar needs --over PCI_ADDRESS"));
    }
    let mut device = Device::open(address)?;
    let mut failed = Vec::new();
    for case in chosen {
        let (name, ok) = match case {
            Chosen::Chain(case) => (
                case.name.to_string(),
                run_case(&mut device, kind, case, options.other)?,
            ),
            Chosen::Other(name) => {
                let outcome = run_other(&mut device, kind, &name, options)?;
                (name.clone(), report(&name, outcome, options.other)?)
            }
        };
        if !ok {
            failed.push(name);
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

fn run_other(device: &mut Device, kind: Kind, name: &str, options: &Options) -> Result<Outcome> {
    match name {
        "driver-ok-twice" => transport::driver_ok_twice(device, kind),
        "msix-storm" => transport::msix_storm(device, kind),
        "bar-over-bar" => {
            let over = options
                .over
                .ok_or_else(|| Error::usage("bar-over-bar needs --over PCI_ADDRESS"))?;
            transport::bar_over_bar(device, kind, over)
        }
        "deflate-flood" => flood::deflate_flood(device, options.seconds),
        _ => match net_frames::case_length(name) {
            Some(len) => net_frames::send(device, len),
            None => Err(Error::usage(format!("no case {name:?}"))),
        },
    }
}

/// Prints a case's line (with the other disk's checksum, read now); whether it was ok.
fn report(name: &str, outcome: Outcome, other: Option<&Path>) -> Result<bool> {
    let other_sha = match other {
        Some(path) => Some(read_other(path)?),
        None => None,
    };
    let ok = u8::from(outcome.ok);
    let mut fields: Vec<(&str, &dyn Display)> = vec![("name", &name)];
    for (k, v) in &outcome.fields {
        fields.push((k, v));
    }
    if let Some(sha) = &other_sha {
        fields.push(("other_sha256", sha));
    }
    fields.push(("ok", &ok));
    event("case", &fields)?;
    Ok(outcome.ok)
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
        Kind::Rng | Kind::Net | Kind::Balloon => None,
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
    let mut fields: Vec<(&str, &dyn Display)> = vec![
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
        ("needs_reset", &nr as &dyn Display),
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
