//! The VMM's control protocol: one JSON object per line over the VMM's unix socket, a
//! request from the daemon or the CLI, a response from the VMM.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Current state and memory figures.
    Stats,
    /// Stop the vCPUs (the guest's clock keeps running; devices stay up).
    Pause,
    Resume,
    /// End the VM now, as if its power were cut.
    Stop,
    /// Set the balloon's size: memory taken from the guest (0 deflates it completely).
    Balloon {
        target_mib: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    pub state: RunState,
    pub vcpus: u32,
    /// Configured guest memory.
    pub memory_bytes: u64,
    /// Guest memory currently backed by host memory.
    pub guest_resident_bytes: u64,
    /// The VMM process's whole resident set (guest memory included).
    pub vmm_rss_bytes: u64,
    pub uptime_ms: u64,
    /// The balloon, if the VM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<crate::balloon::BalloonStats>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ControlResponse {
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<VmStats>,
    },
    Error {
        message: String,
    },
}

impl ControlResponse {
    pub fn ok() -> Self {
        ControlResponse::Ok { stats: None }
    }

    pub fn error(message: impl Into<String>) -> Self {
        ControlResponse::Error {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_json() {
        let req: ControlRequest = serde_json::from_str(r#"{"command":"pause"}"#).expect("parse");
        assert_eq!(req, ControlRequest::Pause);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"command":"fly"}"#).is_err());
        let req: ControlRequest =
            serde_json::from_str(r#"{"command":"balloon","target_mib":256}"#).expect("parse");
        assert_eq!(req, ControlRequest::Balloon { target_mib: 256 });
        let text = serde_json::to_string(&ControlResponse::error("no")).expect("json");
        assert_eq!(text, r#"{"status":"error","message":"no"}"#);
        let text = serde_json::to_string(&ControlResponse::ok()).expect("json");
        assert_eq!(text, r#"{"status":"ok"}"#);
    }
}
