//! The VMM's control socket: a unix socket on which the daemon or the CLI sends one JSON
//! request per line and reads one JSON response per line (see `skiff_api::control`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_api::control::{ControlRequest, ControlResponse};

use crate::exit::VmExit;
use crate::handle::VmHandle;
use crate::VmmError;

/// A client that stalls mid-request must not hold the control thread for long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer slower than this is logged with what it was: the control thread is meant
/// to answer at once, whatever the guest does (a reclaim excepted).
const SLOW_ANSWER: Duration = Duration::from_millis(250);
/// Requests are small; a longer line is refused rather than buffered.
const MAX_REQUEST: usize = 64 * 1024;

/// Listens on `path` (replacing a stale socket) and serves requests on its own thread.
pub fn serve(path: &Path, vm: VmHandle) -> Result<(), VmmError> {
    let err = |source| VmmError::ControlSocket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let path: PathBuf = path.to_path_buf();
    crate::seccomp::spawn(
        "control".into(),
        crate::seccomp::Role::Control,
        crate::stacks::SERVICE,
        move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve_client(stream, &vm) {
                            log::debug!("control client on {}: {e}", path.display());
                        }
                    }
                    Err(e) => log::warn!("control socket {}: {e}", path.display()),
                }
            }
        },
    )
    .map_err(VmmError::Thread)?;
    Ok(())
}

fn serve_client(stream: UnixStream, vm: &VmHandle) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = ControlRequest::from_line(&line);
        // A stop ends the process: it is carried out below, once answered, or the client
        // may read nothing.
        let stop = matches!(request, Ok(ControlRequest::Stop));
        let started = Instant::now();
        let response = match request {
            Ok(request) => {
                let what = format!("{request:?}");
                // A reclaim pages memory out and takes its time by design.
                let quick = !matches!(request, ControlRequest::Reclaim { .. });
                let response = handle(request, vm);
                if quick && started.elapsed() >= SLOW_ANSWER {
                    log::warn!(
                        "control: {what} took {} ms to answer",
                        started.elapsed().as_millis()
                    );
                }
                response
            }
            Err(e) => ControlResponse::error(format!("bad request: {e}")),
        };
        let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
        text.push('\n');
        let written = writer
            .write_all(text.as_bytes())
            .and_then(|()| writer.flush());
        if stop {
            vm.stop(VmExit::Stopped);
        }
        written?;
        reader.set_limit(MAX_REQUEST as u64);
    }
}

/// Maps each request to its action: the one place control requests are interpreted
/// (but for a stop, which `serve_client` carries out after answering).
fn handle(request: ControlRequest, vm: &VmHandle) -> ControlResponse {
    match request {
        ControlRequest::Stats => match vm.stats() {
            Ok(stats) => ControlResponse::Ok {
                stats: Some(stats),
                reclaim: None,
            },
            Err(e) => ControlResponse::error(format!("cannot read stats: {e}")),
        },
        ControlRequest::Pause => match vm.pause() {
            Ok(()) => ControlResponse::ok(),
            Err(e) => ControlResponse::error(e.to_string()),
        },
        ControlRequest::Resume => {
            vm.resume();
            ControlResponse::ok()
        }
        ControlRequest::Balloon { target_mib } => match vm.set_balloon_target(target_mib) {
            Ok(()) => ControlResponse::ok(),
            Err(e) => ControlResponse::error(e.to_string()),
        },
        ControlRequest::PowerButton => match vm.press_power_button() {
            Ok(()) => ControlResponse::ok(),
            Err(e) => ControlResponse::error(format!("cannot press the power button: {e}")),
        },
        ControlRequest::Stop => ControlResponse::ok(),
        ControlRequest::Sampling { period_secs, pages } => {
            match vm.set_sampling(period_secs, pages) {
                Ok(()) => ControlResponse::ok(),
                Err(e) => ControlResponse::error(e.to_string()),
            }
        }
        ControlRequest::Reclaim { bytes, mode } => match vm.reclaim(bytes, mode) {
            Ok(report) => ControlResponse::Ok {
                stats: None,
                reclaim: Some(report),
            },
            Err(e) => ControlResponse::error(e.to_string()),
        },
        ControlRequest::PageSharing { enabled } => match vm.set_page_sharing(enabled) {
            Ok(now) if now == enabled => ControlResponse::ok(),
            Ok(_) => ControlResponse::error("KSM is not available on this host"),
            Err(e) => ControlResponse::error(e.to_string()),
        },
    }
}

/// How long a client waits for the answer to `request`.
fn answer_timeout(request: &ControlRequest) -> Duration {
    let work = match request {
        ControlRequest::Reclaim { .. } => crate::memory::reclaim::RECLAIM_DEADLINE,
        _ => CLIENT_TIMEOUT,
    };
    work + Duration::from_secs(1)
}

/// Sends one request to a VMM's control socket and returns its response.
pub fn request(path: &Path, request: &ControlRequest) -> std::io::Result<ControlResponse> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(answer_timeout(request)))?;
    let mut text = serde_json::to_string(request).map_err(std::io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(line.trim()).map_err(std::io::Error::other)
}
