//! The VMM's control protocol: one JSON object per line over the VMM's unix socket, a
//! request from the daemon or the CLI, a response from the VMM.

use serde::{Deserialize, Serialize};

use crate::memory::{ReclaimMode, ReclaimReport, ReclaimStats, SharingStats, WorkingSetStats};

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
    /// Press the ACPI power button: a guest that handles it shuts down (a graceful stop).
    PowerButton,
    /// Set the balloon's size: memory taken from the guest (0 deflates it completely).
    Balloon {
        target_mib: u64,
    },
    /// Change working-set sampling; an absent field keeps its value. A period of 0 stops
    /// sampling and KVM dirty logging. Takes effect at once (the running period is dropped).
    Sampling {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period_secs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pages: Option<u32>,
    },
    /// Hypervisor-level reclaim: page out (or mark cold) about `bytes` of guest memory,
    /// pages the working-set sample has not seen written first. Answers with a report.
    Reclaim {
        bytes: u64,
        #[serde(default)]
        mode: ReclaimMode,
    },
    /// Let KSM merge this VM's memory (MADV_MERGEABLE) or not (MADV_UNMERGEABLE, which
    /// copies merged pages back: the VM's resident set grows by what it shared).
    PageSharing {
        enabled: bool,
    },
}

impl ControlRequest {
    /// Parses one request line as it arrives on the socket (surrounding whitespace and the
    /// newline ignored). The one parser of untrusted control input, fuzzed as such.
    pub fn from_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Working-set sampling, if KVM can log dirty pages for this VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set: Option<WorkingSetStats>,
    #[serde(default)]
    pub sharing: SharingStats,
    #[serde(default)]
    pub reclaim: ReclaimStats,
}

// One response per request, moved once: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ControlResponse {
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stats: Option<VmStats>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reclaim: Option<ReclaimReport>,
    },
    Error {
        message: String,
    },
}

impl ControlResponse {
    pub fn ok() -> Self {
        ControlResponse::Ok {
            stats: None,
            reclaim: None,
        }
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
        let req: ControlRequest =
            serde_json::from_str(r#"{"command":"power_button"}"#).expect("parse");
        assert_eq!(req, ControlRequest::PowerButton);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"command":"fly"}"#).is_err());
        let req: ControlRequest =
            serde_json::from_str(r#"{"command":"balloon","target_mib":256}"#).expect("parse");
        assert_eq!(req, ControlRequest::Balloon { target_mib: 256 });
        let line = ControlRequest::from_line(" {\"command\":\"stop\"}\r\n").expect("line");
        assert_eq!(line, ControlRequest::Stop);
        let text = serde_json::to_string(&ControlResponse::error("no")).expect("json");
        assert_eq!(text, r#"{"status":"error","message":"no"}"#);
        let text = serde_json::to_string(&ControlResponse::ok()).expect("json");
        assert_eq!(text, r#"{"status":"ok"}"#);
    }

    #[test]
    fn memory_requests_on_the_wire() {
        let parse = |text: &str| serde_json::from_str::<ControlRequest>(text).expect(text);
        assert_eq!(
            parse(r#"{"command":"sampling","period_secs":2}"#),
            ControlRequest::Sampling {
                period_secs: Some(2),
                pages: None
            }
        );
        assert_eq!(
            parse(r#"{"command":"reclaim","bytes":1048576}"#),
            ControlRequest::Reclaim {
                bytes: 1 << 20,
                mode: ReclaimMode::Pageout
            }
        );
        assert_eq!(
            parse(r#"{"command":"reclaim","bytes":4096,"mode":"cold"}"#),
            ControlRequest::Reclaim {
                bytes: 4096,
                mode: ReclaimMode::Cold
            }
        );
        assert_eq!(
            parse(r#"{"command":"page_sharing","enabled":false}"#),
            ControlRequest::PageSharing { enabled: false }
        );
        for bad in [
            r#"{"command":"reclaim"}"#,
            r#"{"command":"reclaim","bytes":1,"mode":"swap"}"#,
            r#"{"command":"sampling","period":2}"#,
            r#"{"command":"page_sharing"}"#,
        ] {
            assert!(
                serde_json::from_str::<ControlRequest>(bad).is_err(),
                "{bad}"
            );
        }
        let request = ControlRequest::Sampling {
            period_secs: None,
            pages: Some(64),
        };
        let text = serde_json::to_string(&request).expect("json");
        assert_eq!(text, r#"{"command":"sampling","pages":64}"#);
    }

    #[test]
    fn a_reclaim_report_travels_in_the_ok_response() {
        let response = ControlResponse::Ok {
            stats: None,
            reclaim: Some(ReclaimReport {
                requested_bytes: 8192,
                reclaimed_bytes: 4096,
                ..ReclaimReport::default()
            }),
        };
        let text = serde_json::to_string(&response).expect("json");
        assert!(
            text.starts_with(
                r#"{"status":"ok","reclaim":{"mode":"pageout","requested_bytes":8192"#
            ),
            "{text}"
        );
        let back: ControlResponse = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, response);
    }

    #[test]
    fn stats_from_a_vmm_without_memory_figures_still_parse() {
        let text = r#"{"state":"running","vcpus":1,"memory_bytes":1,"guest_resident_bytes":0,
            "vmm_rss_bytes":0,"uptime_ms":0}"#;
        let stats: VmStats = serde_json::from_str(text).expect("parse");
        assert_eq!(stats.working_set, None);
        assert!(!stats.sharing.mergeable);
    }
}
