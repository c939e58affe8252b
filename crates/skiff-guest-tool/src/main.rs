//! `skiff-guest-tool`: a small static binary that runs inside Skiff guests (busybox initramfs)
//! for end-to-end tests and memory experiments. Run `skiff-guest-tool help` for the commands.
//!
//! Output contract: results are `key=value` lines on stdout (periodic reports are
//! `EVENT key=value ...` lines); a failure is one line on stderr, `skiff-guest-tool: <what>:
//! <why>`, with exit code 1 (2 for command-line mistakes).

mod bench;
mod cli;
mod datagen;
mod error;
mod fileio;
mod hold;
mod iobench;
mod mem;
mod meminfo;
mod net;
mod output;
mod virtio_abuse;
mod vsock;
mod zero;

use std::process::ExitCode;
use std::time::Duration;

use cli::{Command, ContentArg};
use datagen::{fill_pages, run_nonce, PageContent, SplitMix64, MIB, PAGE_WORDS};
use error::{Context, Error, Result};
use mem::Mapping;
use output::{event, f2, kv};

fn main() -> ExitCode {
    let args: std::result::Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let result = match args {
        Ok(args) => cli::parse(&args).and_then(run),
        Err(bad) => Err(Error::usage(format!(
            "argument is not valid UTF-8: {}",
            bad.to_string_lossy()
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-guest-tool: {e}");
            if e.is_usage() {
                eprintln!("run 'skiff-guest-tool help' for usage");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn page_content(c: ContentArg) -> PageContent {
    match c {
        ContentArg::Same => PageContent::Same,
        ContentArg::Varied(Some(seed)) => PageContent::Varied { nonce: seed },
        ContentArg::Varied(None) => PageContent::Varied { nonce: run_nonce() },
    }
}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Help => output::text(cli::USAGE),
        Command::Touch { mib, content } => {
            let mut m = Mapping::anonymous_mib(mib)?;
            let took = m.touch(page_content(content));
            kv("touched_mib", mib)?;
            kv("elapsed_s", f2(took.as_secs_f64()))?;
            m.free()?;
            kv("freed_mib", mib)
        }
        Command::Hold {
            mib,
            seconds,
            content,
        } => {
            let signals = hold::StopSignals::block()?;
            let mut m = Mapping::anonymous_mib(mib)?;
            let took = m.touch(page_content(content));
            kv("held_mib", mib)?;
            kv("elapsed_s", f2(took.as_secs_f64()))?;
            let released = signals.wait(seconds.map(Duration::from_secs_f64))?;
            m.free()?;
            kv("released", released.as_str())
        }
        Command::WriteFile { path, mib, seed } => {
            let d = fileio::write_file(&path, mib, seed)?;
            kv("sha256", &d.sha256)?;
            kv("bytes", d.bytes)
        }
        Command::VerifyFile { path } => {
            let d = fileio::verify_file(&path)?;
            kv("sha256", &d.sha256)?;
            kv("bytes", d.bytes)
        }
        Command::Meminfo => {
            let text = std::fs::read_to_string("/proc/meminfo").context(|| "read /proc/meminfo")?;
            for (key, value) in meminfo::report(&text)? {
                kv(key, value)?;
            }
            let online = "/sys/devices/system/cpu/online";
            let cpus = std::fs::read_to_string(online).context(|| format!("read {online}"))?;
            kv("cpus_online", meminfo::count_cpu_list(&cpus)?)
        }
        Command::Membench {
            mib,
            seconds,
            interval,
            seed,
        } => membench(mib, seconds, interval, seed),
        Command::Grow {
            start_mib,
            end_mib,
            step_mib,
            seconds_per_step,
            seed,
        } => grow(start_mib, end_mib, step_mib, seconds_per_step, seed),
        Command::NetSend {
            host,
            port,
            mib,
            seed,
            timeout,
        } => net::send(&host, port, mib, seed, timeout),
        Command::NetRecv { port, bind } => net::recv(&bind, port),
        Command::Iobench { path, job } => {
            let out = iobench::run(&path, &job)?;
            kv("mode", job.mode())?;
            kv("threads", job.threads)?;
            kv("block_bytes", job.block)?;
            kv("ops", out.ops)?;
            kv("bytes", out.bytes)?;
            kv("elapsed_s", format!("{:.3}", out.elapsed.as_secs_f64()))?;
            kv("throughput_mib_s", f2(out.throughput_mib_s()))?;
            kv("iops", format!("{:.0}", out.iops()))
        }
        Command::ZeroRange {
            path,
            offset_mib,
            len_mib,
            punch,
        } => {
            let bytes = zero::zero_range(&path, offset_mib << 20, len_mib << 20, punch)?;
            kv("zeroed_bytes", bytes)
        }
        Command::VsockEcho { port, once } => vsock::echo(port, once),
        Command::VsockSend {
            cid,
            port,
            message,
            timeout,
        } => vsock::send(cid, port, &message, timeout),
        Command::VirtioAbuse {
            address,
            cases,
            other,
            over,
            seconds,
        } => virtio_abuse::run(
            &address,
            &cases,
            &virtio_abuse::Options {
                other: other.as_deref(),
                over: over.as_deref(),
                seconds,
            },
        ),
    }
}

fn membench(mib: u64, seconds: f64, interval: Option<f64>, seed: u64) -> Result<()> {
    let mut m = Mapping::anonymous_mib(mib)?;
    m.touch(PageContent::Varied { nonce: seed });
    let mut rng = SplitMix64::new(seed);
    let out = bench::run(
        m.words_mut(),
        Duration::from_secs_f64(seconds),
        &mut rng,
        interval.map(Duration::from_secs_f64),
        |elapsed, ops, tp| {
            event(
                "progress",
                &[
                    ("elapsed_s", &f2(elapsed.as_secs_f64())),
                    ("ops", &ops),
                    ("throughput_mib_s", &f2(tp)),
                ],
            )
        },
    )?;
    kv("mib", mib)?;
    kv("ops", out.ops)?;
    kv("elapsed_s", f2(out.elapsed.as_secs_f64()))?;
    kv("throughput_mib_s", f2(out.throughput_mib_s()))?;
    kv("checksum", format!("{:016x}", out.checksum))?;
    m.free()
}

fn grow(start: u64, end: u64, step: u64, seconds_per_step: f64, seed: u64) -> Result<()> {
    let mut m = Mapping::anonymous_mib(start.max(end))?;
    let words_per_mib = usize::try_from(MIB / 8).map_err(|_| Error::runtime("MiB overflow"))?;
    let content = PageContent::Varied { nonce: seed };
    let mut rng = SplitMix64::new(seed);
    let mut touched_words = 0usize;
    let steps = bench::grow_steps(start, end, step);
    for (i, ws) in steps.iter().enumerate() {
        let ws_words = usize::try_from(*ws)
            .ok()
            .and_then(|w| w.checked_mul(words_per_mib))
            .ok_or_else(|| Error::usage(format!("working set {ws} MiB is too large")))?;
        let words = m.words_mut();
        if ws_words > touched_words {
            let first_page = (touched_words / PAGE_WORDS) as u64;
            fill_pages(&mut words[touched_words..ws_words], first_page, content);
            touched_words = ws_words;
        }
        let out = bench::run(
            &mut words[..ws_words],
            Duration::from_secs_f64(seconds_per_step),
            &mut rng,
            None,
            |_, _, _| Ok(()),
        )?;
        event(
            "step",
            &[
                ("index", &(i + 1)),
                ("working_set_mib", ws),
                ("ops", &out.ops),
                ("elapsed_s", &f2(out.elapsed.as_secs_f64())),
                ("throughput_mib_s", &f2(out.throughput_mib_s())),
            ],
        )?;
    }
    kv("steps", steps.len())?;
    m.free()
}
