//! The daemon's errors, each with the HTTP status it answers with. Bad input is always a
//! 4xx that names the field; a 5xx means the daemon itself could not do its job.

use crate::store::StoreError;
use crate::vmm::ControlError;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The request is malformed or asks for something impossible.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("the request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("no VM named `{0}`")]
    NotFound(String),
    /// No image matches the reference (the message says which).
    #[error("{0}")]
    ImageNotFound(String),
    /// The image store could not read or write its files.
    #[error("{0}")]
    ImageStore(String),
    #[error("no {kind} named `{name}`")]
    NotFoundNamed { kind: &'static str, name: String },
    /// The host's network could not be set up (bridge, rules, dnsmasq, files).
    #[error("network: {0}")]
    Network(String),
    #[error("name: a VM named `{0}` exists already")]
    Duplicate(String),
    /// The daemon's state does not allow the action (a VM's, another network's subnet).
    #[error("{0}")]
    Conflict(String),
    #[error("VM `{name}`: {source}")]
    Vmm { name: String, source: ControlError },
    #[error("cannot start the VMM for `{name}`: {source}")]
    Launch {
        name: String,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// Admission control: the host cannot promise the VM its memory.
    #[error("VM `{name}` cannot start: {source}")]
    Admission {
        name: String,
        source: skiff_mem_policy::AdmissionError,
    },
}

impl HostError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        HostError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            HostError::Invalid { .. } | HostError::Malformed(_) => 400,
            HostError::NotFound(_)
            | HostError::ImageNotFound(_)
            | HostError::NotFoundNamed { .. } => 404,
            HostError::Duplicate(_) | HostError::Conflict(_) => 409,
            HostError::Admission { .. } => 409,
            // The VMM did not do what was asked: its state (ending, hung) is in the way.
            HostError::Vmm { .. } => 409,
            HostError::Launch { .. }
            | HostError::Store(_)
            | HostError::ImageStore(_)
            | HostError::Network(_) => 500,
        }
    }
}
