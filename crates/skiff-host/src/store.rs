//! The daemon's state on disk: one directory per VM under `<state>/vms/`, holding its record
//! (`vm.json`, written atomically), its VMM's sockets, console and logs, and its events.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use skiff_api::VmSpec;

use crate::jail::JailIds;
use crate::model::{Desired, Event, VmState};

/// What the daemon must remember about a VM across its own restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub desired: Desired,
    /// The last state the daemon saw; only `failed` and `stopped` matter after a restart.
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    /// The VMM process, while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRecord>,
    /// The VM's index among the daemon's jailed VMs, from its first jailed start until it is
    /// deleted: its VMM's uid and gid are the daemon's `--jail-uid-base` plus this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_index: Option<u32>,
    /// The VM's addresses on managed networks, leased when it was created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<skiff_api::network::NicAddress>,
}

/// Enough to find a VMM again after the daemon restarts, and not mistake another process
/// that got the same PID for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The process the daemon started: the VMM, or a jailed VMM's supervisor.
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub start_time: u64,
    /// The uid and gid it was jailed as (the VMM is then `pid`'s only child).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailIds>,
}

/// The files of one VM.
#[derive(Clone, Debug)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    /// The spec as `skiff run -c` reads it.
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    /// Jailed, a symlink to the socket in the jail's `run/`.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The jailed VMM's root (`skiff run --jail`).
    pub fn jail(&self) -> PathBuf {
        self.dir.join("jail")
    }
    /// A FIFO that is the VMM's stdin: the guest's serial input.
    pub fn console_in(&self) -> PathBuf {
        self.dir.join("console.in")
    }
    /// The VMM's stdout: everything the guest wrote to its serial port.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The VMM's stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    /// Written by `skiff run --status-file` when the VM ends.
    pub fn status_file(&self) -> PathBuf {
        self.dir.join("exit-status")
    }
    pub fn events(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A VM's events file is kept below this size: past it, its older half is dropped, so a
/// guest that makes its VM restart without end cannot fill the disk with events.
pub const MAX_EVENTS_BYTES: u64 = 256 * 1024;

/// The state directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Held while an events file is appended to or trimmed.
    events: Arc<Mutex<()>>,
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let vms = root.join("vms");
        fs::create_dir_all(&vms).map_err(io_err(&vms))?;
        Ok(Store {
            root: root.to_path_buf(),
            events: Arc::new(Mutex::new(())),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a VM's control socket will be (its length is checked before the VM exists).
    pub fn socket_path_for(root: &Path, name: &str) -> PathBuf {
        VmPaths {
            dir: root.join("vms").join(name),
        }
        .control_socket()
    }

    pub fn paths(&self, name: &str) -> VmPaths {
        VmPaths {
            dir: self.root.join("vms").join(name),
        }
    }

    /// Every VM on disk. A record that cannot be read is reported and left alone, so one
    /// damaged file does not hide the other VMs.
    pub fn load_all(&self) -> Result<Vec<(String, VmRecord)>, StoreError> {
        let vms = self.root.join("vms");
        let mut out = Vec::new();
        for entry in fs::read_dir(&vms).map_err(io_err(&vms))? {
            let entry = entry.map_err(io_err(&vms))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if skiff_api::validate_name(&name).is_err() {
                continue; // our own temporary or foreign files
            }
            match self.load(&name) {
                Ok(Some(record)) => out.push((name, record)),
                Ok(None) => {}
                Err(e) => log::error!("skipping VM {name}: {e}"),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn load(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        let path = self.paths(name).record();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Creates the VM's directory; fails if it exists (the name is taken).
    pub fn create_dir(&self, name: &str) -> Result<VmPaths, StoreError> {
        let paths = self.paths(name);
        fs::create_dir(&paths.dir).map_err(io_err(&paths.dir))?;
        Ok(paths)
    }

    /// Writes the record and the spec file atomically.
    pub fn save(&self, name: &str, record: &VmRecord) -> Result<(), StoreError> {
        let paths = self.paths(name);
        write_atomic(&paths.spec(), &to_json(&record.spec, &paths.spec())?)?;
        write_atomic(&paths.record(), &to_json(record, &paths.record())?)
    }

    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.paths(name).dir;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    pub fn append_event(&self, event: &Event) -> Result<(), StoreError> {
        let path = self.paths(&event.vm).events();
        let mut line = serde_json::to_vec(event).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        line.push(b'\n');
        let _held = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(&line).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len > MAX_EVENTS_BYTES {
            keep_newest_half(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// The VM's events, oldest first (lines that do not parse are skipped).
    pub fn events(&self, name: &str) -> Result<Vec<Event>, StoreError> {
        let path = self.paths(name).events();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

/// Rewrites an events file with its newest lines only, about half its limit.
fn keep_newest_half(path: &Path) -> io::Result<()> {
    let bytes = fs::read(path)?;
    let cut = bytes.len().saturating_sub((MAX_EVENTS_BYTES / 2) as usize);
    let start = bytes[cut..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| cut + i + 1);
    let partial = path.with_extension("jsonl.partial");
    fs::write(&partial, &bytes[start..])?;
    fs::rename(&partial, path)
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(value).map_err(|source| StoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Write to a temporary file, fsync it, rename it over the target and fsync the directory:
/// after a crash the file is either the old or the new version, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;

    fn record() -> VmRecord {
        VmRecord {
            spec: VmSpec::from_json(r#"{"name":"a","kernel":"/k","memory":"64M"}"#).expect("spec"),
            desired: Desired::Running,
            state: VmState::Running,
            reason: None,
            restarts: 2,
            process: Some(ProcessRecord {
                pid: 42,
                start_time: 1234,
                jail: Some(JailIds {
                    uid: 200_003,
                    gid: 200_003,
                }),
            }),
            jail_index: Some(3),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn save_load_round_trip_and_no_temporary_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.create_dir("a").expect("create");
        assert!(store.create_dir("a").is_err(), "a name is taken once");
        store.save("a", &record()).expect("save");
        assert_eq!(store.load("a").expect("load"), Some(record()));
        let files: Vec<_> = fs::read_dir(store.paths("a").dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(files.iter().all(|f| !f.to_string_lossy().ends_with(".tmp")));
        let spec = fs::read_to_string(store.paths("a").spec()).expect("spec file");
        assert_eq!(
            VmSpec::from_json(&spec).expect("spec parses"),
            record().spec
        );
    }

    #[test]
    fn records_without_a_jail_index_still_load() {
        let mut old = serde_json::to_value(record()).expect("json");
        old.as_object_mut().expect("object").remove("jail_index");
        let loaded: VmRecord = serde_json::from_value(old).expect("an older record");
        assert_eq!(loaded.jail_index, None);
        let text = serde_json::to_string(&record()).expect("json");
        assert!(text.contains("\"jail_index\":3"), "{text}");
    }

    #[test]
    fn load_all_skips_damaged_and_foreign_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        for name in ["b", "a", "broken"] {
            store.create_dir(name).expect("create");
        }
        store.save("a", &record()).expect("save");
        store.save("b", &record()).expect("save");
        fs::write(store.paths("broken").record(), b"{not json").expect("write");
        fs::create_dir(dir.path().join("vms").join(".tmp-x")).expect("foreign dir");
        let names: Vec<String> = store
            .load_all()
            .expect("load")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.load("missing").expect("load"), None);
        store.remove("a").expect("remove");
        store.remove("a").expect("removing twice is fine");
        assert_eq!(store.load("a").expect("load"), None);
    }

    #[test]
    fn events_append_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.create_dir("a").expect("create");
        for (i, kind) in [EventKind::Created, EventKind::Started]
            .into_iter()
            .enumerate()
        {
            let event = Event {
                time_ms: i as u64,
                vm: "a".into(),
                kind,
                message: format!("event {i}"),
            };
            store.append_event(&event).expect("append");
        }
        let events = store.events("a").expect("events");
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Created, EventKind::Started]
        );
    }

    #[test]
    fn an_events_file_stays_below_its_limit_and_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.create_dir("loop").expect("create");
        let total = 20_000;
        for i in 0..total {
            let event = Event {
                time_ms: i,
                vm: "loop".into(),
                kind: EventKind::Restarting,
                message: format!("guest requested a reboot; restart {i} in 0 ms"),
            };
            store.append_event(&event).expect("append");
            let len = fs::metadata(store.paths("loop").events())
                .expect("events file")
                .len();
            assert!(len <= MAX_EVENTS_BYTES, "{len} bytes after {i} events");
        }
        let events = store.events("loop").expect("events");
        assert!(events.len() > 100 && events.len() < total as usize / 2);
        assert_eq!(events.last().map(|e| e.time_ms), Some(total - 1));
        let times: Vec<u64> = events.iter().map(|e| e.time_ms).collect();
        assert!(times.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
    }
}
