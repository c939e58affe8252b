//! One error type for the whole tool: a single human-readable line, plus whether the failure was
//! a usage mistake (exit code 2) or a run-time failure (exit code 1).

use std::fmt;
use std::io;

/// An error that ends the program with one clear line on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    usage: bool,
}

impl Error {
    /// A run-time failure (exit code 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            usage: false,
        }
    }

    /// A command-line mistake (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            usage: true,
        }
    }

    /// Whether this is a usage error.
    pub fn is_usage(&self) -> bool {
        self.usage
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        if self.usage {
            2
        } else {
            1
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `Result` with the tool's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Attach a description of what was being done to an `io::Error`.
pub trait Context<T> {
    /// Wrap the error as "`what`: `io error`".
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::runtime(format!("{}: {e}", what().into())))
    }
}

/// The last OS error, described with `what`.
pub fn last_os_error(what: &str) -> Error {
    Error::runtime(format!("{what}: {}", io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_formats_one_line() {
        let r: io::Result<()> = Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
        let e = r.context(|| "open /x").err();
        assert_eq!(e.map(|e| e.to_string()), Some("open /x: gone".to_string()));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Error::usage("u").exit_code(), 2);
        assert_eq!(Error::runtime("r").exit_code(), 1);
        assert!(Error::usage("u").is_usage());
    }
}
