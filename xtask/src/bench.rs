//! `cargo xtask bench [boot|tiny|all] [--rounds N]`: Skiff beside QEMU in one run of the
//! emulated host (or directly), interleaved, medians and ratios. Record the printed
//! tables in docs/benchmarks.md with the command that made them.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::e2e::{self, direct_env, emulated_env};
use crate::host::{self, layout, BootOptions, Payload, Stream};
use crate::mode::Mode;
use crate::{apt, assets, ModeOpt};

const BENCH_BIN: &str = "skiff-bench";

#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure: boot (Debian kernel to init), tiny (VMM start-up), or all.
    #[arg(default_value = "all", value_parser = ["boot", "tiny", "all"])]
    pub what: String,
    /// Rounds per configuration (each round runs every configuration once, in turn).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    #[command(flatten)]
    pub mode: ModeOpt,
}

pub fn main(args: BenchArgs) -> Result<ExitCode> {
    apt::ensure_installed(apt::HOST_PACKAGES)?;
    let mode = args.mode.mode.resolve()?;
    let assets = assets::prepare()?;
    let binaries = e2e::skiff_binaries(true)?;
    let bench = e2e::build_harness_bin(BENCH_BIN)?;
    let bench_args = vec![args.what.clone(), args.rounds.to_string()];
    let status = match mode {
        Mode::Direct => Command::new(&bench)
            .args(&bench_args)
            .envs(direct_env(&assets)?)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", bench.display()))?
            .code()
            .unwrap_or(1),
        Mode::Emulated => {
            let mut payload = Payload::default();
            payload.add_release_binaries(&binaries)?;
            let exe = format!("{}/{BENCH_BIN}", layout::BIN_DIR);
            payload.add_binary(&exe, &bench)?;
            for (key, value) in emulated_env() {
                payload.env(key, &value);
            }
            payload.command = Some(std::iter::once(exe).chain(bench_args).collect());
            let options = BootOptions {
                memory: "8G".into(),
                timeout: Some(Duration::from_secs(3600)),
                stream: Stream::Plain,
            };
            host::boot(&assets, &payload, &options)?
        }
    };
    Ok(crate::exit_code(status))
}
