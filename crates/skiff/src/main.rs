//! `skiff`: run a VM in this process (`skiff run`), run the host daemon (`skiff host`) and
//! manage its VMs (`skiff vm`), images (`skiff image`) and networks (`skiff network`).

mod api_client;
mod attach;
mod ctl;
mod host;
mod image;
mod network;
mod table;
mod vm;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff::{console, logger, run};

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
    Host(Box<host::HostArgs>),
    /// Manage VMs through the host daemon.
    Vm(Box<vm::VmArgs>),
    /// Manage the daemon's disk images (import, ls, inspect, rm).
    Image(image::ImageArgs),
    /// Manage the host daemon's networks (addresses, DHCP, DNS, NAT, isolation).
    Network(network::NetworkArgs),
}

fn main() -> ExitCode {
    logger::init();
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "run") {
        exec_vmm(&args[2..]);
    }
    let cli = Cli::parse();
    skiff::exit_with(match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Ctl(args) => ctl::run(args),
        Command::Host(args) => host::run(*args),
        Command::Vm(args) => vm::run(*args),
        Command::Image(args) => image::run(args),
        Command::Network(args) => network::run(args),
    })
}

/// `skiff run` becomes the lean `skiff-vmm` binary installed beside this one (same process,
/// same arguments), so a VM's process maps only the VMM's code. Without it, `skiff run`
/// runs here, in the whole binary.
fn exec_vmm(args: &[OsString]) {
    let Some(vmm) = vmm_binary() else {
        log::debug!("no skiff-vmm beside this binary: running the VM in skiff itself");
        return;
    };
    let error = std::process::Command::new(&vmm)
        .arg0("skiff-vmm")
        .args(args)
        .exec();
    log::warn!(
        "cannot execute {}: {error}; running the VM in skiff itself",
        vmm.display()
    );
}

fn vmm_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let vmm = exe.with_file_name("skiff-vmm");
    vmm.is_file().then_some(vmm)
}
