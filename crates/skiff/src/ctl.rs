//! `skiff ctl`: talk to one VMM's control socket directly.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use skiff_api::control::{ControlRequest, ControlResponse};

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
    /// Set the balloon's size in MiB: memory taken from the guest (0 deflates it).
    Balloon {
        #[arg(value_name = "MIB")]
        target_mib: u64,
    },
}

pub fn run(args: CtlArgs) -> Result<u8> {
    let request = match args.action {
        Action::Stats => ControlRequest::Stats,
        Action::Pause => ControlRequest::Pause,
        Action::Resume => ControlRequest::Resume,
        Action::Stop => ControlRequest::Stop,
        Action::Balloon { target_mib } => ControlRequest::Balloon { target_mib },
    };
    let response = skiff_vmm::control::request(&args.socket, &request)
        .with_context(|| format!("cannot reach the VMM at {}", args.socket.display()))?;
    match response {
        ControlResponse::Ok { stats: Some(stats) } => {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
        ControlResponse::Ok { stats: None } => {}
        ControlResponse::Error { message } => bail!("{message}"),
    }
    Ok(0)
}
