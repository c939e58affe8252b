//! What can go wrong, each variant naming the file (and the value) at fault.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{value}` to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("unexpected content in {path}: `{content}` ({reason})")]
    Parse {
        path: PathBuf,
        content: String,
        reason: &'static str,
    },
    #[error("{path} has no `{key}` line")]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("cannot create the cgroup directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cgroup {path}: it does not exist")]
    Missing { path: PathBuf },
    #[error("cannot remove the cgroup directory {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} still holds processes {pids:?} after waiting {waited:?}")]
    NotEmpty {
        path: PathBuf,
        pids: Vec<u32>,
        waited: Duration,
    },
    #[error("no mounted cgroup hierarchy offers the {controller} controller ({hierarchy})")]
    NoController {
        controller: &'static str,
        hierarchy: String,
    },
    #[error("{what} has no equivalent on cgroup {version}")]
    Unsupported {
        what: &'static str,
        version: &'static str,
    },
    #[error("{what}: {value} is out of range ({reason})")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid cgroup name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot mount {fstype} at {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CgroupError>;
