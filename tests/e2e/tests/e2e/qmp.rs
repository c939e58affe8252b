//! A QMP client (QEMU's JSON control protocol over a unix socket) and the balloon loop a
//! user of QEMU would write around it: every few seconds, set each guest's balloon from the
//! free memory its balloon driver reports. The density benchmark's "QEMU with a balloon
//! script" row runs it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MIB: u64 = 1 << 20;

/// One QMP connection, past the capabilities handshake.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to QEMU's `-qmp unix:PATH,server=on,wait=off` socket, retrying until QEMU
    /// has created it (or `timeout`).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if started.elapsed() > timeout => {
                    return Err(format!("QMP {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("QMP connection closed".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}"))
    }

    /// Runs one command; its `return` value. Asynchronous events in between are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").map_err(|e| e.to_string())?;
        loop {
            let answer = self.read()?;
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("QMP {command}: {error}"));
            }
        }
    }
}

/// The balloon device's QOM path when it was given `id=balloon0`.
const BALLOON: &str = "/machine/peripheral/balloon0";
/// How often the script looks, and the stats polling interval it asks the driver for.
pub const SCRIPT_PERIOD: Duration = Duration::from_secs(2);
/// What the script leaves free in each guest above what it uses.
const RESERVE_MIB: u64 = 24;

/// Asks the guest's balloon driver for statistics every `SCRIPT_PERIOD`.
pub fn enable_stats(qmp: &mut Qmp) -> Result<(), String> {
    qmp.execute(
        "qom-set",
        json!({ "path": BALLOON, "property": "guest-stats-polling-interval",
                "value": SCRIPT_PERIOD.as_secs() }),
    )
    .map(|_| ())
}

/// One step of the script for one guest of `size_mib`: the guest's memory as it stands
/// (`query-balloon`'s `actual`) less what it reports free, plus a reserve, becomes its new
/// size (`balloon`), never below `floor_mib`. Returns the size set, in MiB, or `None` while
/// the driver has sent no statistics yet.
pub fn balloon_step(qmp: &mut Qmp, size_mib: u64, floor_mib: u64) -> Result<Option<u64>, String> {
    let stats = qmp.execute(
        "qom-get",
        json!({ "path": BALLOON, "property": "guest-stats" }),
    )?;
    let free = stats["stats"]["stat-free-memory"].as_i64().unwrap_or(-1);
    if free < 0 {
        return Ok(None);
    }
    let actual = qmp.execute("query-balloon", json!({}))?["actual"]
        .as_u64()
        .unwrap_or(size_mib * MIB);
    let used_mib = actual.saturating_sub(free as u64) / MIB;
    let new_mib = (used_mib + RESERVE_MIB).clamp(floor_mib, size_mib);
    qmp.execute("balloon", json!({ "value": new_mib * MIB }))?;
    Ok(Some(new_mib))
}

/// The script as a thread over every guest's QMP socket: runs until `stop` is set.
pub struct BalloonScript {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BalloonScript {
    /// Starts the loop; `guests` receives each new guest's QMP connection.
    pub fn start(
        guests: std::sync::mpsc::Receiver<Qmp>,
        size_mib: u64,
        floor_mib: u64,
    ) -> BalloonScript {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            // Each guest's connection and the size last set (MiB), printed when it changes.
            let mut all: Vec<(Qmp, Option<u64>)> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                all.extend(guests.try_iter().map(|qmp| (qmp, None)));
                // A guest whose QEMU is gone (OOM-killed) drops out; the benchmark sees it.
                let mut n = 0;
                all.retain_mut(|(qmp, last)| {
                    n += 1;
                    match balloon_step(qmp, size_mib, floor_mib) {
                        Ok(set) => {
                            if set.is_some() && set != *last {
                                eprintln!("balloon script: guest {n} set to {set:?} MiB");
                                *last = set;
                            }
                            true
                        }
                        Err(e) => {
                            eprintln!("balloon script: guest {n} dropped: {e}");
                            false
                        }
                    }
                });
                std::thread::sleep(SCRIPT_PERIOD);
            }
        });
        BalloonScript {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BalloonScript {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
