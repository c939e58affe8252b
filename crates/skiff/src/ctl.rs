//! `skiff ctl`: talk to one VMM's control socket directly.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use skiff_api::control::{ControlRequest, ControlResponse};

#[derive(Args)]
pub struct CtlArgs {
    /// The VMM's control socket (`skiff run --control-socket`).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[arg(value_enum)]
    action: Action,
}

#[derive(Clone, Copy, ValueEnum)]
enum Action {
    Stats,
    Pause,
    Resume,
    Stop,
}

pub fn run(args: CtlArgs) -> Result<u8> {
    let request = match args.action {
        Action::Stats => ControlRequest::Stats,
        Action::Pause => ControlRequest::Pause,
        Action::Resume => ControlRequest::Resume,
        Action::Stop => ControlRequest::Stop,
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
