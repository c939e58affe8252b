//! `cargo xtask test`: what CI runs. Installs missing Debian packages, checks formatting
//! and clippy's lints, runs the unit tests of the whole workspace, a short run of each fuzz
//! target, then the e2e suite; the output ends with the e2e runner's summary line, and the
//! exit status is non-zero if anything failed.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::e2e::{self, E2eArgs};
use crate::host::HostFault;
use crate::test_report::FailedTest;
use crate::{apt, fuzz, paths, ModeOpt};

/// Seconds each fuzz target runs in `cargo xtask test` (docs/fuzzing.md has longer runs).
const CI_FUZZ_SECONDS: u64 = 15;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only e2e tests whose name contains FILTER.
    pub filter: Option<String>,
    #[command(flatten)]
    pub mode: ModeOpt,
    /// Seconds of silence after which the emulated host counts as hung (`cargo xtask
    /// e2e --stall`); 0: never.
    #[arg(long, default_value_t = 600)]
    pub stall: u64,
}

pub fn main(args: TestArgs) -> Result<ExitCode> {
    apt::ensure_installed(apt::HOST_PACKAGES)?;
    // Lint gates: rustfmt's layout and clippy's lints (warnings are errors) fail the run.
    let linted = cargo(&["fmt", "--all", "--", "--check"])?
        & cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    if !linted {
        eprintln!("error: cargo fmt --check or cargo clippy failed; running the tests anyway");
    }
    // The harness's own unit tests run here too; its e2e test binary runs below.
    let unit = cargo(&["test", "--workspace", "--exclude", "skiff-e2e"])?
        & cargo(&["test", "-p", "skiff-e2e", "--lib"])?;
    if !unit {
        eprintln!("error: unit tests failed; running the e2e suite anyway");
    }
    // --- Fuzzing step: every target in fuzz/ for CI_FUZZ_SECONDS, one per CPU at a time
    // (17 targets: about 2.2 min on 2 CPUs, plus the instrumented build). A crash fails
    // the run; its input is kept in the cache's fuzz/artifacts/. ---
    let fuzzed = match fuzz::targets().and_then(|t| fuzz::run(&t, CI_FUZZ_SECONDS, None)) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("error: fuzzing: {e:#}");
            false
        }
    };
    if !fuzzed {
        eprintln!("error: a fuzz target failed; running the e2e suite anyway");
    }
    let e2e_args = E2eArgs {
        filter: args.filter,
        mode: args.mode,
        memory: "8G".into(),
        // A guard against a hung emulated host, not a budget: on a loaded machine the
        // suite has taken longer than 30 minutes.
        timeout: 3000,
        stall: args.stall,
        test_args: Vec::new(),
    };
    let e2e_status = run_e2e(&e2e_args)?;
    Ok(if linted && unit && fuzzed && e2e_status == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the e2e suite, giving the emulated host's known faults one second chance each;
/// returns the test executable's exit status. Every retry is counted and the count printed
/// at the end (`SKIFF-E2E-RETRIES: …`), so that no retry goes unseen; libtest's summary line
/// is repeated after it, to stay the output's last line.
pub fn run_e2e(args: &E2eArgs) -> Result<i32> {
    let mut retries = Retries::default();
    let status = run_e2e_counting(args, &mut retries);
    retries.print();
    status
}

/// What a suite run retried.
#[derive(Default)]
struct Retries {
    /// Steps the tests retried themselves (`SKIFF-E2E-RETRY`): `TEST: why` each.
    in_tests: Vec<String>,
    /// Tests run once more in a fresh emulated host (`SKIFF-E2E-RERUN`).
    reruns: Vec<String>,
    /// The last run's libtest summary line.
    summary: Option<String>,
    /// Every run's test times, in the order the tests ended.
    times: Vec<(String, std::time::Duration)>,
}

impl Retries {
    fn print(&self) {
        let tests: std::collections::BTreeSet<&str> = self
            .in_tests
            .iter()
            .filter_map(|r| r.split_once(": ").map(|(test, _)| test))
            .chain(self.reruns.iter().map(String::as_str))
            .collect();
        println!(
            "SKIFF-E2E-RETRIES: {} test(s) needed a retry{}: {} guest boot(s) retried inside tests, \
             {} test(s) rerun in a fresh host",
            tests.len(),
            if tests.is_empty() {
                String::new()
            } else {
                format!(" ({})", tests.into_iter().collect::<Vec<_>>().join(", "))
            },
            self.in_tests.len(),
            self.reruns.len()
        );
        println!("{}", times_line(&self.times));
        if let Some(summary) = &self.summary {
            println!("{summary}");
        }
    }

    /// Counts what a run of the suite announced.
    fn add(&mut self, run: &crate::host::Finished) {
        self.in_tests.extend(run.retries.iter().cloned());
        self.summary.clone_from(&run.summary);
        self.times.extend(run.times.iter().cloned());
    }
}

/// `SKIFF-E2E-TIMES:` the tests' time in all, and those of 10 s or more, slowest first
/// (what to look at when the suite outgrows CI's budget).
fn times_line(times: &[(String, std::time::Duration)]) -> String {
    if times.is_empty() {
        // libtest's `--nocapture` splits `test NAME ... ok` around the test's output.
        return "SKIFF-E2E-TIMES: no test's result stood on one line (--nocapture?)".to_owned();
    }
    let total: u64 = times.iter().map(|(_, t)| t.as_secs()).sum();
    let mut slow: Vec<&(String, std::time::Duration)> =
        times.iter().filter(|(_, t)| t.as_secs() >= 10).collect();
    slow.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    let slow: Vec<String> = slow
        .iter()
        .map(|(name, t)| format!("{name} {} s", t.as_secs()))
        .collect();
    format!(
        "SKIFF-E2E-TIMES: {total} s in tests; 10 s or more: {}",
        if slow.is_empty() {
            "none".to_owned()
        } else {
            slow.join(", ")
        }
    )
}

fn run_e2e_counting(args: &E2eArgs, retries: &mut Retries) -> Result<i32> {
    let first = match e2e::run(args) {
        Ok(finished) => finished,
        Err(e) => match e.downcast::<HostFault>() {
            Ok(fault) => {
                retries.in_tests.extend_from_slice(fault.report.retries());
                retries.times.extend_from_slice(fault.report.times());
                return rerun_after_host_fault(args, &fault, retries);
            }
            Err(e) => return Err(e),
        },
    };
    retries.add(&first);
    // Tests that failed only because a guest died of a triple fault (the emulated host's
    // nested virtualization, docs/testing.md) run once more, in a fresh host; any other
    // failure fails the run as it is. Only the emulated host reports failed tests.
    let failed = &first.failed;
    if first.status == 0 || failed.is_empty() || !failed.iter().all(|t| t.triple_fault) {
        return Ok(first.status);
    }
    let names: Vec<String> = failed.iter().map(|t| t.name.clone()).collect();
    println!(
        "SKIFF-E2E-RERUN: {} failed of a guest triple fault in the emulated host; running {} once more",
        names.join(", "),
        if names.len() == 1 { "it" } else { "them" }
    );
    retries.reruns.extend(names.iter().cloned());
    let second = e2e::run(&exactly(args, names))?;
    retries.add(&second);
    Ok(second.status)
}

/// The emulated host's kernel crashed or hung under the suite (not a test failing):
/// the tests it had not finished run once more in a fresh host, so that a summary line
/// still ends the output. Tests that had failed of a guest triple fault before it run
/// again too, as they would have without the fault, and their second result counts.
/// Tests that had failed otherwise run again to show why, but fail the run whatever the
/// second run says. A second fault is an error.
fn rerun_after_host_fault(args: &E2eArgs, fault: &HostFault, retries: &mut Retries) -> Result<i32> {
    let settled = fault.report.settled();
    let (faulted, failed): (Vec<&FailedTest>, Vec<&FailedTest>) =
        fault.report.failed().iter().partition(|t| t.triple_fault);
    let faulted: Vec<String> = faulted.iter().map(|t| t.name.clone()).collect();
    let failed: Vec<String> = failed.iter().map(|t| t.name.clone()).collect();
    let unfinished: Vec<String> = e2e::list_tests(args)?
        .into_iter()
        .filter(|t| !settled.contains(t) && !failed.contains(t) && !faulted.contains(t))
        .collect();
    let mut also = Vec::new();
    if !faulted.is_empty() {
        also.push(format!(
            "those whose guest died of a triple fault ({}), once more",
            faulted.join(", ")
        ));
    }
    if !failed.is_empty() {
        also.push(format!(
            "to show why, those that had failed ({}), which fail the run",
            failed.join(", ")
        ));
    }
    println!(
        "SKIFF-E2E-RERUN: {fault}; running in a fresh host the {} test(s) it had not finished{}",
        unfinished.len(),
        also.iter().map(|a| format!(" and {a}")).collect::<String>()
    );
    // One retry, of whatever the host was running (the fault names the test when known),
    // and one for each test a triple fault had failed.
    retries.reruns.push(fault.to_string());
    retries.reruns.extend(faulted.iter().cloned());
    let names: Vec<String> = failed
        .iter()
        .chain(&faulted)
        .cloned()
        .chain(unfinished)
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let second = e2e::run(&exactly(args, names))?;
    retries.add(&second);
    Ok(if failed.is_empty() {
        second.status
    } else {
        second.status.max(1)
    })
}

/// `args` narrowed to exactly the tests `names`, keeping libtest's options (an
/// `--ignored` run must stay one) and dropping its name filters.
fn exactly(args: &E2eArgs, names: Vec<String>) -> E2eArgs {
    E2eArgs {
        filter: None,
        test_args: libtest_options(&args.test_args)
            .into_iter()
            .chain(std::iter::once("--exact".to_owned()))
            .chain(names)
            .collect(),
        ..args.clone()
    }
}

/// libtest's options that take a separate value (`--skip NAME`).
const OPTIONS_WITH_VALUE: &[&str] = &[
    "--skip",
    "--test-threads",
    "--format",
    "--color",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

/// The options among libtest arguments, with their values; positional name filters and
/// `--exact` left out.
fn libtest_options(test_args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = test_args.iter();
    while let Some(arg) = args.next() {
        if !arg.starts_with('-') || arg == "--exact" {
            continue;
        }
        kept.push(arg.clone());
        if OPTIONS_WITH_VALUE.contains(&arg.as_str()) {
            kept.extend(args.next().cloned());
        }
    }
    kept
}

/// Runs `cargo ARGS` in the workspace; true if it succeeded.
fn cargo(args: &[&str]) -> Result<bool> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(paths::workspace())
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_keeps_libtests_options_but_not_its_filters() {
        let args: Vec<String> = [
            "overcommit",
            "--ignored",
            "--skip",
            "slow",
            "--exact",
            "--nocapture",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            libtest_options(&args),
            ["--ignored", "--skip", "slow", "--nocapture"]
        );
    }
}
