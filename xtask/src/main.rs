//! Developer tasks for Skiff: `cargo xtask <command>`.
//!
//! - `assets`: fetch Debian's kernel and busybox, build the guest initramfs and root
//!   file-system image.
//! - `host`: boot the emulated AMD-V host (QEMU/TCG) and run a command in it.
//! - `e2e`: build and run the end-to-end tests (emulated host or directly).
//! - `test`: unit tests of the whole workspace, then the e2e suite.
//! - `demo`: boot real Linux guests and show their console.
//! - `bench`: Skiff beside QEMU, interleaved, medians and ratios.
//! - `fuzz`: build the fuzz targets on stable Rust and run each for a bounded time.

mod apt;
mod assets;
mod bench;
mod cmd;
mod console;
mod cpio;
mod demo;
mod e2e;
mod fuzz;
mod guest;
mod host;
mod host_cpus;
mod host_lvm;
mod host_stall;
mod hostfs;
mod initramfs;
mod kernel;
mod ldd;
mod mode;
mod modules;
mod outer_qemu;
mod paths;
mod process;
mod rootfs;
mod test;
mod test_image;
mod test_report;
mod vmlinux;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::mode::ModeArg;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Skiff developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the guest kernel and busybox, build the guest initramfs and root image (cached).
    Assets,
    /// Boot the emulated AMD-V host and run CMD in it (default: an interactive shell).
    Host(host::HostArgs),
    /// Build the e2e tests and run them (in the emulated host, or directly).
    E2e(e2e::E2eArgs),
    /// Install what is missing, run the workspace's unit tests, then the e2e suite.
    Test(test::TestArgs),
    /// Boot real Linux guests and show their console.
    Demo(demo::DemoArgs),
    /// Benchmarks: Skiff beside QEMU in the same run, interleaved (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Build the fuzz targets (stable Rust, libFuzzer) and run each for a bounded time.
    Fuzz(fuzz::FuzzArgs),
    /// Build (or find cached) the Debian test image of the image-store tests; print its path.
    TestImage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Assets => {
            let assets = assets::prepare()?;
            assets.print_summary();
            Ok(ExitCode::SUCCESS)
        }
        Command::Host(args) => host::main(args),
        Command::E2e(args) => e2e::main(args),
        Command::Test(args) => test::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Bench(args) => bench::main(args),
        Command::Fuzz(args) => fuzz::main(args),
        Command::TestImage => {
            println!("{}", test_image::build(&paths::cache()?)?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Turns a child's exit status (0-255) into our own exit code.
pub fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// `--mode` is shared by `e2e`, `test` and `demo`.
#[derive(clap::Args, Clone, Copy)]
pub struct ModeOpt {
    /// Where guests run: in the emulated AMD-V host, directly on this machine's KVM,
    /// or auto (direct when /dev/kvm has real hardware virtualization).
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
}
