//! `skiff ctl`: talk to one VMM's control socket directly.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use skiff_api::control::{ControlRequest, ControlResponse};
use skiff_api::memory::ReclaimMode;

#[derive(Args)]
pub struct CtlArgs {
    /// The VMM's control socket (`skiff run --control-socket`).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(Clone, Copy, Subcommand)]
enum Action {
    /// Print the VM's state and memory figures (JSON), the balloon's included.
    Stats,
    /// Stop the vCPUs.
    Pause,
    Resume,
    /// End the VM now.
    Stop,
    /// Press the ACPI power button (the guest shuts down if it handles it).
    PowerButton,
    /// Set the balloon's size in MiB: memory taken from the guest (0 deflates it).
    Balloon {
        #[arg(value_name = "MIB")]
        target_mib: u64,
    },
    /// Change working-set sampling; `--period 0` turns it (and KVM dirty logging) off.
    Sampling {
        /// Seconds per sampling period.
        #[arg(long, value_name = "SECS")]
        period: Option<u32>,
        /// Guest pages sampled per period.
        #[arg(long, value_name = "N")]
        pages: Option<u32>,
    },
    /// Page about MIB MiB of guest memory out to host swap (needs swap or zram); prints
    /// what left host RAM (JSON).
    Reclaim {
        #[arg(value_name = "MIB")]
        mib: u64,
        /// Only mark the pages cold (MADV_COLD): first to go when the host reclaims.
        #[arg(long)]
        cold: bool,
    },
    /// Let KSM merge this VM's memory, or stop it (unmerging copies shared pages back).
    PageSharing {
        #[arg(value_enum)]
        state: OnOff,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

pub fn run(args: CtlArgs) -> Result<u8> {
    let request = match args.action {
        Action::Stats => ControlRequest::Stats,
        Action::Pause => ControlRequest::Pause,
        Action::Resume => ControlRequest::Resume,
        Action::Stop => ControlRequest::Stop,
        Action::PowerButton => ControlRequest::PowerButton,
        Action::Balloon { target_mib } => ControlRequest::Balloon { target_mib },
        Action::Sampling { period, pages } => ControlRequest::Sampling {
            period_secs: period,
            pages,
        },
        Action::Reclaim { mib, cold } => ControlRequest::Reclaim {
            bytes: mib
                .checked_mul(1 << 20)
                .context("that many MiB do not fit in 64 bits")?,
            mode: if cold {
                ReclaimMode::Cold
            } else {
                ReclaimMode::Pageout
            },
        },
        Action::PageSharing { state } => ControlRequest::PageSharing {
            enabled: matches!(state, OnOff::On),
        },
    };
    let response = skiff_vmm::control::request(&args.socket, &request)
        .with_context(|| format!("cannot reach the VMM at {}", args.socket.display()))?;
    match response {
        ControlResponse::Ok { stats, reclaim } => {
            if let Some(stats) = stats {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            }
            if let Some(report) = reclaim {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
        ControlResponse::Error { message } => bail!("{message}"),
    }
    Ok(0)
}
