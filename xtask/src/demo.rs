//! `cargo xtask demo`: boots real Linux guests (with Skiff when its binary is built,
//! and with QEMU for comparison) and shows their consoles, in the emulated host or
//! directly.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::e2e::{self, direct_env, emulated_env};
use crate::host::{self, layout, BootOptions, Payload, Stream};
use crate::mode::Mode;
use crate::{apt, assets, ModeOpt};

const DEMO_BIN: &str = "skiff-demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub mode: ModeOpt,
}

pub fn main(args: DemoArgs) -> Result<ExitCode> {
    apt::ensure_installed(apt::HOST_PACKAGES)?;
    let mode = args.mode.mode.resolve()?;
    let assets = assets::prepare()?;
    let binaries = e2e::skiff_binaries(true)?;
    let demo = e2e::build_harness_bin(DEMO_BIN)?;
    let status = match mode {
        Mode::Direct => Command::new(&demo)
            .envs(direct_env(&assets)?)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", demo.display()))?
            .code()
            .unwrap_or(1),
        Mode::Emulated => {
            println!(
                "Booting the emulated AMD-V host (QEMU, software CPU); guests run on its KVM."
            );
            let mut payload = Payload::default();
            payload.add_release_binaries(&binaries)?;
            let exe = format!("{}/{DEMO_BIN}", layout::BIN_DIR);
            payload.add_binary(&exe, &demo)?;
            for (key, value) in emulated_env() {
                payload.env(key, &value);
            }
            payload.command = Some(vec![exe]);
            let options = BootOptions {
                memory: "8G".into(),
                timeout: Some(Duration::from_secs(600)),
                stream: Stream::Plain,
            };
            host::boot(&assets, &payload, &options)?
        }
    };
    Ok(crate::exit_code(status))
}
