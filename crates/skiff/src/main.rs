//! `skiff`: run a VM in this process (`skiff run`), run the host daemon (`skiff host`) and
//! manage its VMs (`skiff vm`).

mod api_client;
mod attach;
mod cgroup;
mod console;
mod ctl;
mod host;
mod jail;
mod logger;
mod run;
mod signals;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: many isolated Linux machines on one host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM in this process, with its serial console on stdin/stdout.
    Run(Box<run::RunArgs>),
    /// Send a control request (stats, pause, resume, stop, balloon, sampling, reclaim,
    /// page sharing) to a running VMM.
    Ctl(ctl::CtlArgs),
    /// Run the host daemon (REST API, one VMM process per VM); `skiff host status` asks it.
    Host(host::HostArgs),
    /// Manage VMs through the host daemon.
    Vm(vm::VmArgs),
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Ctl(args) => ctl::run(args),
        Command::Host(args) => host::run(args),
        Command::Vm(args) => vm::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("skiff: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes that a message already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}
