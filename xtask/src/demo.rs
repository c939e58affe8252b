//! `cargo xtask demo`: boots real Linux guests (with Skiff when its binary is built,
//! and with QEMU for comparison) and shows their consoles, in the emulated host or
//! directly.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::{e2e, ModeOpt};

const DEMO_BIN: &str = "skiff-demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub mode: ModeOpt,
}

pub fn main(args: DemoArgs) -> Result<ExitCode> {
    let status = e2e::run_harness_bin(DEMO_BIN, &[], args.mode, Duration::from_secs(600))?;
    Ok(crate::exit_code(status))
}
