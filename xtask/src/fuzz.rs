//! `cargo xtask fuzz [TARGET...] [--seconds N]`: builds the fuzz targets in `fuzz/` with
//! libFuzzer's coverage instrumentation on the stable toolchain and runs each for a
//! bounded time, one worker each, as many targets at once as the machine has CPUs
//! (`--jobs`). Corpora and crash artifacts live in
//! the cache (`<cache>/fuzz/`), so coverage accumulates across runs; the checked-in seeds
//! in `fuzz/seeds/<target>/` start an empty corpus. See docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{cmd, paths};

/// What `cargo fuzz` passes rustc, minus the sanitizer (`-Zsanitizer` needs nightly):
/// SanitizerCoverage's module pass with libFuzzer's counters, PC table and comparison
/// tracing, `cfg(fuzzing)`, and the checks a release build would drop.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// libFuzzer options for every run: a hang is an input that takes 10 s, 2 GiB is a leak,
/// and inputs up to 8 KiB cover the rings and a bzImage's setup header.
const LIBFUZZER_ARGS: &[&str] = &[
    "-timeout=10",
    "-rss_limit_mb=2048",
    "-max_len=8192",
    "-print_final_stats=1",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Targets to run (default: all of `fuzz/fuzz_targets/`).
    pub targets: Vec<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets run at once (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Only list the targets.
    #[arg(long)]
    pub list: bool,
}

pub fn main(args: FuzzArgs) -> Result<ExitCode> {
    let all = targets()?;
    if args.list {
        for t in &all {
            println!("{t}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let chosen = if args.targets.is_empty() {
        all
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target `{t}` (there are: {})", all.join(", "));
            }
        }
        args.targets
    };
    let ok = run(&chosen, args.seconds, args.jobs)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds and runs `targets` for `seconds` each, `jobs` at a time (default: one per
/// CPU), prints a summary table; true if none crashed, hung or ran out of memory.
pub fn run(targets: &[String], seconds: u64, jobs: Option<usize>) -> Result<bool> {
    let bin_dir = build(targets)?;
    let state = paths::cache()?.join("fuzz");
    let jobs = jobs
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .clamp(1, targets.len().max(1));
    // Workers take the next target from a shared index; results keep the targets' order.
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<Outcome>>>> =
        targets.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else { break };
                let outcome = run_target(&bin_dir, &state, target, seconds);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(outcome);
                }
            });
        }
    });
    let results = results
        .into_iter()
        .zip(targets)
        .map(|(slot, target)| {
            slot.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(anyhow::anyhow!("fuzz target {target} did not report")))
        })
        .collect::<Result<Vec<Outcome>>>()?;
    println!("\n| target | seconds | executions | exec/s | coverage (edges) | features | corpus | result |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &results {
        println!("{r}");
    }
    Ok(results.iter().all(|r| r.crash.is_none()))
}

/// The fuzz targets: one file each in `fuzz/fuzz_targets/`.
pub fn targets() -> Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

fn fuzz_dir() -> PathBuf {
    paths::workspace().join("fuzz")
}

/// Builds the targets with coverage instrumentation; returns where the binaries are. The
/// explicit `--target` keeps the flags away from build scripts and proc macros, and the
/// fuzz crate's own target directory keeps them away from the workspace's builds.
fn build(targets: &[String]) -> Result<PathBuf> {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = fuzz_dir().join("target");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--release", "--target", &triple, "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(fuzz_dir().join("Cargo.toml"))
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for t in targets {
        cargo.args(["--bin", t]);
    }
    eprintln!(
        "fuzz: building {} target(s) with coverage instrumentation",
        targets.len()
    );
    cmd::run(&mut cargo)?;
    Ok(target_dir.join(triple).join("release"))
}

struct Outcome {
    target: String,
    seconds: f64,
    stats: Stats,
    crash: Option<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        let result = self.crash.as_deref().unwrap_or("no crash");
        write!(
            f,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {result} |",
            self.target,
            self.seconds,
            s.executions,
            s.exec_per_sec,
            s.coverage,
            s.features,
            s.corpus
        )
    }
}

fn run_target(bin_dir: &Path, state: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = state.join("corpus").join(target);
    let artifacts = state.join("artifacts").join(target);
    let logs = state.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        paths::create_dir(dir)?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut fuzzer = Command::new(bin_dir.join(target));
    fuzzer
        .args(LIBFUZZER_ARGS)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // New inputs go to the first directory; the seeds are only read.
        .arg(&corpus)
        .arg(fuzz_dir().join("seeds").join(target))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    eprintln!(
        "fuzz: {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let start = Instant::now();
    let status = fuzzer
        .status()
        .with_context(|| format!("cannot run {}", cmd::describe(&fuzzer)))?;
    let elapsed = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stats = Stats::parse(&text);
    let crash = (!status.success()).then(|| {
        let what = text
            .lines()
            .find_map(|l| {
                l.split_once("ERROR: libFuzzer: ")
                    .map(|(_, w)| w.to_string())
            })
            .unwrap_or_else(|| status.to_string());
        let unit = text.lines().find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| p.to_string())
        });
        eprintln!("fuzz: {target} FAILED: {what}\n{}", tail(&text, 40));
        match unit {
            Some(path) => format!("**{what}**: {path}"),
            None => format!("**{what}**"),
        }
    });
    Ok(Outcome {
        target: target.to_string(),
        seconds: elapsed,
        stats,
        crash,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Figures from libFuzzer's output: its final statistics and its last status line
/// (`#N ... cov: C ft: F corp: U/S ...`).
#[derive(Default, Debug, PartialEq, Eq)]
struct Stats {
    executions: u64,
    exec_per_sec: u64,
    coverage: u64,
    features: u64,
    corpus: u64,
}

impl Stats {
    fn parse(log: &str) -> Stats {
        let mut s = Stats::default();
        for line in log.lines() {
            if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
                s.executions = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
                s.exec_per_sec = v.trim().parse().unwrap_or(0);
            } else if line.starts_with('#') && line.contains(" cov: ") {
                let mut words = line.split_whitespace();
                while let Some(w) = words.next() {
                    let value = || words.clone().next().unwrap_or("");
                    match w {
                        "cov:" => s.coverage = value().parse().unwrap_or(0),
                        "ft:" => s.features = value().parse().unwrap_or(0),
                        "corp:" => {
                            s.corpus = value()
                                .split('/')
                                .next()
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0)
                        }
                        _ => {}
                    }
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_and_final_stats() {
        let log = "\
#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 27Mb
#8192\tpulse  cov: 204 ft: 300 corp: 12/1234b lim: 17 exec/s: 4096 rss: 30Mb
#9000\tDONE   cov: 210 ft: 310 corp: 13/1300b lim: 17 exec/s: 4500 rss: 30Mb
stat::number_of_executed_units: 9000
stat::average_exec_per_sec:     4500
stat::new_units_added:          12
";
        assert_eq!(
            Stats::parse(log),
            Stats {
                executions: 9000,
                exec_per_sec: 4500,
                coverage: 210,
                features: 310,
                corpus: 13,
            }
        );
        assert_eq!(Stats::parse(""), Stats::default());
    }
}
