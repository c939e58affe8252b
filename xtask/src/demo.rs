//! todo
use std::process::ExitCode;
#[derive(clap::Args)]
pub struct DemoArgs {}
pub fn main(_a: DemoArgs) -> anyhow::Result<ExitCode> {
    todo!()
}
