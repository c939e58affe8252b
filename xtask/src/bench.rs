//! `cargo xtask bench [boot|tiny|all|blk] [--rounds N]`: Skiff beside QEMU in one run of the
//! emulated host (or directly), interleaved, medians and ratios. Record the printed
//! tables in docs/benchmarks.md with the command that made them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::{e2e, ModeOpt};

const BENCH_BIN: &str = "skiff-bench";

#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure: boot (Debian kernel to init), tiny (VMM start-up), all (both),
    /// or blk (virtio-blk throughput and IOPS).
    #[arg(default_value = "all", value_parser = ["boot", "tiny", "all", "blk"])]
    pub what: String,
    /// Rounds per configuration (each round runs every configuration once, in turn).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    #[command(flatten)]
    pub mode: ModeOpt,
}

pub fn main(args: BenchArgs) -> Result<ExitCode> {
    let bench_args = [args.what.clone(), args.rounds.to_string()];
    let status =
        e2e::run_harness_bin(BENCH_BIN, &bench_args, args.mode, Duration::from_secs(3600))?;
    Ok(crate::exit_code(status))
}
