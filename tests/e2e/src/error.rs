//! Harness errors. Their `Debug` is their `Display`, so `unwrap()`/`expect()` in a test
//! show the guest's console, not a struct dump.

use std::sync::Arc;
use std::time::Duration;

#[derive(thiserror::Error, Clone)]
pub enum Error {
    #[error("{var} is not set: run the e2e tests with `cargo xtask e2e` (see docs/testing.md)")]
    Env { var: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("timed out after {after:?} waiting for {waiting_for}\n{context}")]
    Timeout {
        waiting_for: String,
        after: Duration,
        context: String,
    },
    #[error("the VMM exited before {waiting_for}\n{context}")]
    Exited {
        waiting_for: String,
        context: String,
    },
    #[error("{what} failed: {detail}")]
    Tool { what: String, detail: String },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}
