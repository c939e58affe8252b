//! `skiff-vmm`: the VMM alone, what `skiff run` executes. Every VM's process runs this
//! binary, so it carries only the VMM: without the daemon, its HTTP stack and the CLI, the
//! code a VMM maps (and keeps resident) is a fraction of the `skiff` binary's.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "skiff run",
    version,
    about = "Boot a VM in this process, with its serial console on stdin/stdout"
)]
struct Cli {
    #[command(flatten)]
    run: skiff::run::RunArgs,
}

fn main() -> std::process::ExitCode {
    skiff::logger::init();
    skiff::exit_with(skiff::run::run(Cli::parse().run))
}
