//! Command-line parsing (pure: no I/O), turned into a typed [`Command`].

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::iobench::{Job, Pattern};

/// Usage text printed by `help`.
pub const USAGE: &str = "\
skiff-guest-tool: helper that runs inside Skiff guests for tests and memory experiments

USAGE: skiff-guest-tool COMMAND [ARGS] [OPTIONS]

Results are printed on stdout as key=value lines (periodic reports as
'EVENT key=value ...' lines); errors as one line on stderr with exit code 1
(2 for usage errors). Sizes are in MiB, times in seconds (fractions allowed).

COMMANDS
  touch MIB [--same] [--seed N]
      Map MIB MiB of anonymous memory, write every page, free it, exit.
      Prints touched_mib, elapsed_s, freed_mib. Pages differ from each other
      (and between runs, unless --seed is given); --same makes them identical.
  touch-free MIB [...]          Same as touch.
  hold MIB [--seconds S] [--same] [--seed N]
      Map and touch MIB MiB, print held_mib, then keep it until S seconds
      passed or SIGTERM/SIGINT arrives (forever without --seconds). Prints
      released=timeout|signal at the end.
  write-file PATH MIB [--seed N]
      Write MIB MiB of the deterministic SplitMix64 stream (seed N, default 0)
      to PATH, fsync the file and its directory. Prints sha256, bytes.
  verify-file PATH
      Prints sha256 and bytes of PATH's contents.
  meminfo
      Prints mem_total_kib, mem_free_kib, mem_available_kib, cached_kib (and
      buffers_kib, anon_pages_kib, swap_total_kib, swap_free_kib when present)
      and cpus_online.
  membench MIB [--seconds S] [--interval S] [--seed N]
      Random-access read-modify-write of 64-byte lines in random pages of a
      MIB MiB buffer for S seconds (default 10). Prints throughput_mib_s, ops,
      elapsed_s, checksum; with --interval, 'progress ...' lines meanwhile.
  grow MIB_START MIB_END --step MIB [--seconds-per-step S] [--seed N]
      Like membench over a working set that changes from MIB_START to MIB_END
      (growing or shrinking) by --step MiB, S seconds per step (default 10).
      Prints one 'step index=.. working_set_mib=.. ops=.. elapsed_s=..
      throughput_mib_s=..' line per step, then steps=N.
  net-send HOST PORT MIB [--seed N] [--timeout S]
      Send MIB MiB of the deterministic stream over TCP. Prints sha256, bytes,
      throughput_mib_s. Use an IP address for HOST (the static binary has no
      NSS modules, so name lookup beyond /etc/hosts may fail).
  net-recv PORT [--bind ADDR]
      Accept one TCP connection (prints listening_port first), read to EOF.
      Prints peer, sha256, bytes, throughput_mib_s.
  vsock-echo PORT [--once]
      Listen on AF_VSOCK PORT (prints vsock_listening_port) and echo every
      line back. With --once, exit after the first connection closes.
  vsock-send CID PORT MESSAGE [--timeout S]
      Connect to CID:PORT over AF_VSOCK, send MESSAGE and a newline, print the
      reply line as reply=..., and rtt_us.
  iobench DEV MODE [--mib N] [--block-kib K] [--seconds S] [--threads T] [--seed N]
      Direct I/O (O_DIRECT) on the first N MiB (default 64) of DEV, a block
      device or file. MODE: seq-read, seq-write (the region once, in K KiB
      blocks, default 1024) or rand-read, rand-write (random K KiB blocks,
      default 4, for S seconds, default 5). T threads (default 1), each with one
      request in flight: the queue depth is T. Writes end with fdatasync,
      counted in the time. Prints mode, threads, block_bytes, ops, bytes,
      elapsed_s, throughput_mib_s, iops.
  zero-range DEV OFFSET_MIB LEN_MIB [--punch]
      Zero LEN_MIB MiB of block device DEV from OFFSET_MIB: BLKZEROOUT (the
      disk keeps the space), or with --punch fallocate(PUNCH_HOLE) (the disk may
      give it back: virtio-blk's write-zeroes with unmap). Prints zeroed_bytes.
  virtio-abuse PCI_ADDRESS CASE... [--other PATH] [--over PCI_ADDRESS] [--seconds S]
      Take the virtio device at PCI_ADDRESS (rng, blk, net or balloon) from its
      kernel driver, drive it from user space and run each CASE: a malformed
      chain ('all': every chain case for an rng or blk device), an odd transmit
      frame (net-tx-LEN), DRIVER_OK written twice (driver-ok-twice), an MSI-X
      vector storm (msix-storm), its BAR moved over the BAR of the device at
      --over and back (bar-over-bar), or a balloon deflate-queue flood for S
      seconds (deflate-flood, default 60). Prints one 'case name=.. ok=0|1 ...'
      line per case; with --other, the SHA-256 of the first 64 KiB of PATH (another
      disk) after each. Fails unless every case ended as expected. Root only.
  help                          This text.
";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print usage.
    Help,
    /// Allocate, touch, free.
    Touch { mib: u64, content: ContentArg },
    /// Allocate, touch, hold.
    Hold {
        mib: u64,
        seconds: Option<f64>,
        content: ContentArg,
    },
    /// Write a deterministic file.
    WriteFile { path: PathBuf, mib: u64, seed: u64 },
    /// Hash a file.
    VerifyFile { path: PathBuf },
    /// Print memory and CPU facts.
    Meminfo,
    /// Memory-bound random read-modify-write benchmark.
    Membench {
        mib: u64,
        seconds: f64,
        interval: Option<f64>,
        seed: u64,
    },
    /// Benchmark over a changing working set.
    Grow {
        start_mib: u64,
        end_mib: u64,
        step_mib: u64,
        seconds_per_step: f64,
        seed: u64,
    },
    /// Send deterministic data over TCP.
    NetSend {
        host: String,
        port: u16,
        mib: u64,
        seed: u64,
        timeout: f64,
    },
    /// Receive data over TCP and hash it.
    NetRecv { port: u16, bind: String },
    /// Direct-I/O benchmark on a block device.
    Iobench { path: PathBuf, job: Job },
    /// Zero a range of a block device.
    ZeroRange {
        path: PathBuf,
        offset_mib: u64,
        len_mib: u64,
        punch: bool,
    },
    /// AF_VSOCK line echo server.
    VsockEcho { port: u32, once: bool },
    /// AF_VSOCK client: send one line, print the reply.
    VsockSend {
        cid: u32,
        port: u32,
        message: String,
        timeout: f64,
    },
    /// Malformed descriptor chains from a user-space virtio driver.
    VirtioAbuse {
        address: String,
        cases: Vec<String>,
        other: Option<PathBuf>,
        over: Option<String>,
        seconds: f64,
    },
}

/// Page content requested on the command line for touch/hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentArg {
    /// `--same`.
    Same,
    /// Varied pages; `Some(seed)` makes them reproducible.
    Varied(Option<u64>),
}

/// Default benchmark duration.
pub const DEFAULT_SECONDS: f64 = 10.0;
/// How long virtio-abuse's deflate-flood lasts by default.
pub const DEFAULT_FLOOD_SECONDS: f64 = 60.0;
/// Default network / vsock timeout.
pub const DEFAULT_TIMEOUT: f64 = 30.0;

/// Options and positionals split apart.
#[derive(Debug, Default)]
struct Parsed {
    positionals: Vec<String>,
    values: Vec<(&'static str, String)>,
    flags: Vec<&'static str>,
}

impl Parsed {
    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }
}

/// Split `args` into positionals, valued options (`--name V` or `--name=V`) and boolean flags.
/// `--` ends option parsing.
fn split(
    cmd: &str,
    args: &[String],
    valued: &[&'static str],
    booleans: &[&'static str],
) -> Result<Parsed> {
    let mut p = Parsed::default();
    let mut it = args.iter();
    let mut options_done = false;
    while let Some(arg) = it.next() {
        if options_done || !arg.starts_with("--") {
            p.positionals.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let body = &arg[2..];
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if let Some(&known) = valued.iter().find(|v| **v == name) {
            if p.value(known).is_some() {
                return Err(Error::usage(format!("{cmd}: option --{known} given twice")));
            }
            let v = match inline {
                Some(v) => v,
                None => it.next().cloned().ok_or_else(|| {
                    Error::usage(format!("{cmd}: option --{known} needs a value"))
                })?,
            };
            p.values.push((known, v));
        } else if let Some(&known) = booleans.iter().find(|b| **b == name) {
            if inline.is_some() {
                return Err(Error::usage(format!(
                    "{cmd}: option --{known} takes no value"
                )));
            }
            if !p.flags.contains(&known) {
                p.flags.push(known);
            }
        } else {
            return Err(Error::usage(format!("{cmd}: unknown option '{arg}'")));
        }
    }
    Ok(p)
}

fn expect_positionals<'a>(cmd: &str, p: &'a Parsed, names: &[&str]) -> Result<&'a [String]> {
    if p.positionals.len() != names.len() {
        let want = names.join(" ");
        return Err(Error::usage(format!(
            "{cmd}: expected arguments '{want}', got {} argument(s)",
            p.positionals.len()
        )));
    }
    Ok(&p.positionals)
}

/// Parse a non-negative integer argument.
pub fn parse_u64(what: &str, s: &str) -> Result<u64> {
    s.parse::<u64>().map_err(|_| {
        Error::usage(format!(
            "invalid {what} '{s}': expected a non-negative integer"
        ))
    })
}

fn parse_u32(what: &str, s: &str) -> Result<u32> {
    s.parse::<u32>().map_err(|_| {
        Error::usage(format!(
            "invalid {what} '{s}': expected an integer 0..=4294967295"
        ))
    })
}

fn parse_port(s: &str) -> Result<u16> {
    s.parse::<u16>()
        .map_err(|_| Error::usage(format!("invalid PORT '{s}': expected an integer 0..=65535")))
}

/// A size in MiB that must be at least 1.
fn parse_mib(what: &str, s: &str) -> Result<u64> {
    let v = parse_u64(what, s)?;
    if v == 0 {
        return Err(Error::usage(format!(
            "invalid {what} '{s}': must be at least 1"
        )));
    }
    Ok(v)
}

/// Parse a duration in seconds (finite, non-negative; fractions allowed).
pub fn parse_seconds(what: &str, s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1e9).contains(&v) => Ok(v),
        _ => Err(Error::usage(format!(
            "invalid {what} '{s}': expected a non-negative number of seconds"
        ))),
    }
}

fn seed(p: &Parsed) -> Result<Option<u64>> {
    p.value("seed").map(|s| parse_u64("--seed", s)).transpose()
}

fn content(p: &Parsed) -> Result<ContentArg> {
    let seed = seed(p)?;
    if p.flag("same") {
        if seed.is_some() {
            return Err(Error::usage("--same and --seed cannot be combined"));
        }
        return Ok(ContentArg::Same);
    }
    Ok(ContentArg::Varied(seed))
}

fn seconds_opt(p: &Parsed, name: &str, default: f64) -> Result<f64> {
    match p.value(name) {
        Some(s) => parse_seconds(&format!("--{name}"), s),
        None => Ok(default),
    }
}

/// Parse the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(Error::usage("no command given"));
    };
    let cmd = cmd.as_str();
    match cmd {
        "help" | "--help" | "-h" => Ok(Command::Help),
        "touch" | "touch-free" => {
            let p = split(cmd, rest, &["seed"], &["same"])?;
            let a = expect_positionals(cmd, &p, &["MIB"])?;
            Ok(Command::Touch {
                mib: parse_mib("MIB", &a[0])?,
                content: content(&p)?,
            })
        }
        "hold" => {
            let p = split(cmd, rest, &["seconds", "seed"], &["same"])?;
            let a = expect_positionals(cmd, &p, &["MIB"])?;
            Ok(Command::Hold {
                mib: parse_mib("MIB", &a[0])?,
                seconds: p
                    .value("seconds")
                    .map(|s| parse_seconds("--seconds", s))
                    .transpose()?,
                content: content(&p)?,
            })
        }
        "write-file" => {
            let p = split(cmd, rest, &["seed"], &[])?;
            let a = expect_positionals(cmd, &p, &["PATH", "MIB"])?;
            Ok(Command::WriteFile {
                path: PathBuf::from(&a[0]),
                mib: parse_u64("MIB", &a[1])?,
                seed: seed(&p)?.unwrap_or(0),
            })
        }
        "verify-file" => {
            let p = split(cmd, rest, &[], &[])?;
            let a = expect_positionals(cmd, &p, &["PATH"])?;
            Ok(Command::VerifyFile {
                path: PathBuf::from(&a[0]),
            })
        }
        "meminfo" => {
            let p = split(cmd, rest, &[], &[])?;
            expect_positionals(cmd, &p, &[])?;
            Ok(Command::Meminfo)
        }
        "membench" => {
            let p = split(cmd, rest, &["seconds", "interval", "seed"], &[])?;
            let a = expect_positionals(cmd, &p, &["MIB"])?;
            let interval = p
                .value("interval")
                .map(|s| parse_seconds("--interval", s))
                .transpose()?;
            if interval == Some(0.0) {
                return Err(Error::usage("--interval must be greater than 0"));
            }
            Ok(Command::Membench {
                mib: parse_mib("MIB", &a[0])?,
                seconds: seconds_opt(&p, "seconds", DEFAULT_SECONDS)?,
                interval,
                seed: seed(&p)?.unwrap_or(1),
            })
        }
        "grow" => {
            let p = split(cmd, rest, &["step", "seconds-per-step", "seed"], &[])?;
            let a = expect_positionals(cmd, &p, &["MIB_START", "MIB_END"])?;
            let step = p
                .value("step")
                .ok_or_else(|| Error::usage("grow: --step MIB is required"))?;
            Ok(Command::Grow {
                start_mib: parse_mib("MIB_START", &a[0])?,
                end_mib: parse_mib("MIB_END", &a[1])?,
                step_mib: parse_mib("--step", step)?,
                seconds_per_step: seconds_opt(&p, "seconds-per-step", DEFAULT_SECONDS)?,
                seed: seed(&p)?.unwrap_or(1),
            })
        }
        "net-send" => {
            let p = split(cmd, rest, &["seed", "timeout"], &[])?;
            let a = expect_positionals(cmd, &p, &["HOST", "PORT", "MIB"])?;
            Ok(Command::NetSend {
                host: a[0].clone(),
                port: parse_port(&a[1])?,
                mib: parse_u64("MIB", &a[2])?,
                seed: seed(&p)?.unwrap_or(0),
                timeout: seconds_opt(&p, "timeout", DEFAULT_TIMEOUT)?,
            })
        }
        "net-recv" => {
            let p = split(cmd, rest, &["bind"], &[])?;
            let a = expect_positionals(cmd, &p, &["PORT"])?;
            Ok(Command::NetRecv {
                port: parse_port(&a[0])?,
                bind: p.value("bind").unwrap_or("0.0.0.0").to_string(),
            })
        }
        "vsock-echo" => {
            let p = split(cmd, rest, &[], &["once"])?;
            let a = expect_positionals(cmd, &p, &["PORT"])?;
            Ok(Command::VsockEcho {
                port: parse_u32("PORT", &a[0])?,
                once: p.flag("once"),
            })
        }
        "vsock-send" => {
            let p = split(cmd, rest, &["timeout"], &[])?;
            let a = expect_positionals(cmd, &p, &["CID", "PORT", "MESSAGE"])?;
            let message = a[2].clone();
            if message.contains('\n') {
                return Err(Error::usage(
                    "vsock-send: MESSAGE must not contain a newline",
                ));
            }
            Ok(Command::VsockSend {
                cid: parse_u32("CID", &a[0])?,
                port: parse_u32("PORT", &a[1])?,
                message,
                timeout: seconds_opt(&p, "timeout", DEFAULT_TIMEOUT)?,
            })
        }
        "iobench" => {
            let p = split(
                cmd,
                rest,
                &["mib", "block-kib", "seconds", "threads", "seed"],
                &[],
            )?;
            let a = expect_positionals(cmd, &p, &["DEV", "MODE"])?;
            let (pattern, write) = Job::parse_mode(&a[1]).ok_or_else(|| {
                Error::usage(format!(
                    "iobench: unknown MODE '{}': seq-read, seq-write, rand-read or rand-write",
                    a[1]
                ))
            })?;
            let number = |name: &str, default: u64| match p.value(name) {
                Some(v) => parse_mib(&format!("--{name}"), v),
                None => Ok(default),
            };
            let block_kib = number(
                "block-kib",
                if pattern == Pattern::Sequential {
                    1024
                } else {
                    4
                },
            )?;
            let too_large = || Error::usage("iobench: sizes too large");
            Ok(Command::Iobench {
                path: PathBuf::from(&a[0]),
                job: Job {
                    pattern,
                    write,
                    region: number("mib", 64)?
                        .checked_mul(1 << 20)
                        .ok_or_else(too_large)?,
                    block: usize::try_from(block_kib)
                        .ok()
                        .and_then(|k| k.checked_mul(1024))
                        .ok_or_else(too_large)?,
                    seconds: seconds_opt(&p, "seconds", 5.0)?,
                    threads: usize::try_from(number("threads", 1)?).map_err(|_| too_large())?,
                    seed: seed(&p)?.unwrap_or(1),
                },
            })
        }
        "zero-range" => {
            let p = split(cmd, rest, &[], &["punch"])?;
            let a = expect_positionals(cmd, &p, &["DEV", "OFFSET_MIB", "LEN_MIB"])?;
            Ok(Command::ZeroRange {
                path: PathBuf::from(&a[0]),
                offset_mib: parse_u64("OFFSET_MIB", &a[1])?,
                len_mib: parse_mib("LEN_MIB", &a[2])?,
                punch: p.flag("punch"),
            })
        }
        "virtio-abuse" => {
            let p = split(cmd, rest, &["other", "over", "seconds"], &[])?;
            let Some((address, cases)) = p.positionals.split_first() else {
                return Err(Error::usage("virtio-abuse: expected PCI_ADDRESS CASE..."));
            };
            if cases.is_empty() {
                return Err(Error::usage(
                    "virtio-abuse: name at least one CASE (or all)",
                ));
            }
            Ok(Command::VirtioAbuse {
                address: address.clone(),
                cases: cases.to_vec(),
                other: p.value("other").map(PathBuf::from),
                over: p.value("over").map(str::to_string),
                seconds: match p.value("seconds") {
                    Some(s) => parse_seconds("--seconds", s)?,
                    None => DEFAULT_FLOOD_SECONDS,
                },
            })
        }
        other => Err(Error::usage(format!("unknown command '{other}'"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn ok(s: &str) -> Command {
        parse(&args(s)).unwrap()
    }

    fn usage_err(s: &str) -> String {
        let e = parse(&args(s)).unwrap_err();
        assert!(e.is_usage(), "{e}");
        e.to_string()
    }

    #[test]
    fn help_variants() {
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(ok("--help"), Command::Help);
        assert_eq!(ok("-h"), Command::Help);
        assert!(usage_err("").contains("no command"));
        assert!(usage_err("frobnicate").contains("unknown command 'frobnicate'"));
    }

    #[test]
    fn touch_and_hold() {
        assert_eq!(
            ok("touch 64"),
            Command::Touch {
                mib: 64,
                content: ContentArg::Varied(None)
            }
        );
        assert_eq!(
            ok("touch-free 8 --same"),
            Command::Touch {
                mib: 8,
                content: ContentArg::Same
            }
        );
        assert_eq!(
            ok("touch 8 --seed=5"),
            Command::Touch {
                mib: 8,
                content: ContentArg::Varied(Some(5))
            }
        );
        assert_eq!(
            ok("hold 128 --seconds 2.5 --same"),
            Command::Hold {
                mib: 128,
                seconds: Some(2.5),
                content: ContentArg::Same
            }
        );
        assert_eq!(
            ok("hold --same 1"),
            Command::Hold {
                mib: 1,
                seconds: None,
                content: ContentArg::Same
            }
        );
        assert!(usage_err("touch").contains("expected arguments 'MIB'"));
        assert!(usage_err("touch 0").contains("at least 1"));
        assert!(usage_err("touch -5").contains("invalid MIB"));
        assert!(usage_err("touch 1 2").contains("got 2"));
        assert!(usage_err("touch abc").contains("invalid MIB 'abc'"));
        assert!(usage_err("touch 1 --bogus").contains("unknown option '--bogus'"));
        assert!(usage_err("hold 1 --seconds").contains("needs a value"));
        assert!(usage_err("hold 1 --seconds -1").contains("invalid --seconds"));
        assert!(usage_err("hold 1 --seconds nan").contains("invalid --seconds"));
        assert!(usage_err("hold 1 --seconds 1 --seconds 2").contains("twice"));
        assert!(usage_err("hold 1 --same=yes").contains("takes no value"));
        assert!(usage_err("touch 1 --same --seed 3").contains("cannot be combined"));
    }

    #[test]
    fn files() {
        assert_eq!(
            ok("write-file /data/x 16 --seed 9"),
            Command::WriteFile {
                path: PathBuf::from("/data/x"),
                mib: 16,
                seed: 9
            }
        );
        assert_eq!(
            ok("write-file /data/x 0"),
            Command::WriteFile {
                path: PathBuf::from("/data/x"),
                mib: 0,
                seed: 0
            }
        );
        assert_eq!(
            ok("verify-file /data/x"),
            Command::VerifyFile {
                path: PathBuf::from("/data/x")
            }
        );
        // `--` lets a path start with dashes.
        assert_eq!(
            ok("verify-file -- --odd"),
            Command::VerifyFile {
                path: PathBuf::from("--odd")
            }
        );
        assert!(usage_err("write-file /x").contains("'PATH MIB'"));
        assert!(usage_err("meminfo extra").contains("got 1"));
        assert_eq!(ok("meminfo"), Command::Meminfo);
    }

    #[test]
    fn benches() {
        assert_eq!(
            ok("membench 256"),
            Command::Membench {
                mib: 256,
                seconds: DEFAULT_SECONDS,
                interval: None,
                seed: 1
            }
        );
        assert_eq!(
            ok("membench 256 --seconds 3 --interval 0.5 --seed 2"),
            Command::Membench {
                mib: 256,
                seconds: 3.0,
                interval: Some(0.5),
                seed: 2
            }
        );
        assert!(usage_err("membench 1 --interval 0").contains("greater than 0"));
        assert_eq!(
            ok("grow 64 512 --step 64 --seconds-per-step 5"),
            Command::Grow {
                start_mib: 64,
                end_mib: 512,
                step_mib: 64,
                seconds_per_step: 5.0,
                seed: 1
            }
        );
        assert!(usage_err("grow 64 512").contains("--step MIB is required"));
        assert!(usage_err("grow 64 512 --step 0").contains("at least 1"));
    }

    #[test]
    fn network() {
        assert_eq!(
            ok("net-send 10.0.0.1 5000 32"),
            Command::NetSend {
                host: "10.0.0.1".into(),
                port: 5000,
                mib: 32,
                seed: 0,
                timeout: DEFAULT_TIMEOUT
            }
        );
        assert_eq!(
            ok("net-recv 5000 --bind 127.0.0.1"),
            Command::NetRecv {
                port: 5000,
                bind: "127.0.0.1".into()
            }
        );
        assert!(usage_err("net-recv 70000").contains("invalid PORT"));
        assert_eq!(
            ok("vsock-echo 1234 --once"),
            Command::VsockEcho {
                port: 1234,
                once: true
            }
        );
        assert_eq!(
            ok("vsock-send 2 1234 hello"),
            Command::VsockSend {
                cid: 2,
                port: 1234,
                message: "hello".into(),
                timeout: DEFAULT_TIMEOUT
            }
        );
        assert!(usage_err("vsock-send x 1 m").contains("invalid CID 'x'"));
        let nl = vec![
            "vsock-send".to_string(),
            "2".into(),
            "1".into(),
            "a\nb".into(),
        ];
        assert!(parse(&nl).unwrap_err().to_string().contains("newline"));
    }

    #[test]
    fn iobench_arguments() {
        assert_eq!(
            ok("iobench /dev/vdb rand-write --threads 4 --mib 32"),
            Command::Iobench {
                path: PathBuf::from("/dev/vdb"),
                job: Job {
                    pattern: Pattern::Random,
                    write: true,
                    region: 32 << 20,
                    block: 4096,
                    seconds: 5.0,
                    threads: 4,
                    seed: 1,
                },
            }
        );
        assert_eq!(
            ok("zero-range /dev/vdb 8 16 --punch"),
            Command::ZeroRange {
                path: PathBuf::from("/dev/vdb"),
                offset_mib: 8,
                len_mib: 16,
                punch: true
            }
        );
        let Command::Iobench { job, .. } = ok("iobench /dev/vdb seq-read") else {
            panic!("not iobench");
        };
        assert_eq!((job.block, job.region, job.threads), (1 << 20, 64 << 20, 1));
        assert!(usage_err("iobench /dev/vdb read").contains("unknown MODE"));
        assert!(usage_err("iobench /dev/vdb seq-read --threads 0").contains("at least 1"));
    }

    #[test]
    fn virtio_abuse_args() {
        assert_eq!(
            ok("virtio-abuse 0000:00:01.0 next-loop outside-ram --other /dev/vda"),
            Command::VirtioAbuse {
                address: "0000:00:01.0".into(),
                cases: vec!["next-loop".into(), "outside-ram".into()],
                other: Some(PathBuf::from("/dev/vda")),
                over: None,
                seconds: DEFAULT_FLOOD_SECONDS,
            }
        );
        assert_eq!(
            ok("virtio-abuse 0000:00:02.0 bar-over-bar --over 0000:00:03.0 --seconds 5"),
            Command::VirtioAbuse {
                address: "0000:00:02.0".into(),
                cases: vec!["bar-over-bar".into()],
                other: None,
                over: Some("0000:00:03.0".into()),
                seconds: 5.0,
            }
        );
        assert!(
            usage_err("virtio-abuse 0000:00:02.0 deflate-flood --seconds x").contains("--seconds")
        );
        assert!(usage_err("virtio-abuse 0000:00:01.0").contains("CASE"));
        assert!(usage_err("virtio-abuse").contains("PCI_ADDRESS"));
    }
}
