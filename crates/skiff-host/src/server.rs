//! Running the daemon: the state-directory lock, the unix socket (and optional TCP listener
//! with a bearer token, loopback only), served within `connections`' limits, the sampling
//! loop, and shutdown on SIGINT/SIGTERM. Shutting the daemon
//! down leaves every VMM running: they are in their own sessions and a new daemon adopts them.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};

use crate::service::{Host, HostConfig};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub socket: PathBuf,
    /// Permissions of the unix socket (0600: root only, by default).
    pub socket_mode: u32,
    /// A TCP address and the token its clients must present.
    pub tcp: Option<(SocketAddr, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}: another daemon uses this state directory")]
    Locked(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(transparent)]
    Host(#[from] crate::error::HostError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

fn io_err(
    what: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(io::Error) -> ServeError {
    let path = path.to_string();
    move |source| ServeError::Io { what, path, source }
}

/// Holds an exclusive lock on the state directory for the daemon's life.
fn lock_state_dir(dir: &Path) -> Result<File, ServeError> {
    std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir.display()))?;
    let path = dir.join("daemon.lock");
    let file = File::create(&path).map_err(io_err("cannot open", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServeError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("cannot create", dir.display()))?;
    }
    // The state lock is held: a socket left at this path is a dead daemon's.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot remove", path.display())(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("cannot listen on", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("cannot set permissions of", path.display()))?;
    Ok(listener)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: HostConfig, options: ServeOptions) -> Result<(), ServeError> {
    if let Some((addr, _)) = &options.tcp {
        crate::access::check_listen(*addr)?;
    }
    match crate::connections::raise_fd_limit() {
        Ok(limit) => log::debug!("skiff host: up to {limit} open files"),
        Err(e) => log::warn!("skiff host: cannot raise the open-file limit: {e}"),
    }
    let _lock = lock_state_dir(&config.state_dir)?;
    let unix = bind_unix(&options.socket, options.socket_mode)?;
    let tcp = match &options.tcp {
        Some((addr, token)) => Some((
            TcpListener::bind(addr)
                .await
                .map_err(io_err("cannot listen on", addr))?,
            token.clone(),
        )),
        None => None,
    };
    let host = Host::open(config).await?;
    log::info!(
        "skiff host: serving on {} ({} VMs)",
        options.socket.display(),
        host.list().len()
    );
    tokio::spawn(crate::memory::sample_forever(host.clone()));
    let logs = host.clone();
    tokio::spawn(crate::log_rotation::rotate_forever(
        host.config().log_max_bytes,
        move || logs.log_files(),
    ));
    use crate::connections::{serve_tcp, serve_unix, MAX_TCP_CONNECTIONS, MAX_UNIX_CONNECTIONS};
    let router = crate::api::router(host.clone(), None);
    let unix_task = tokio::spawn(serve_unix(unix, router, MAX_UNIX_CONNECTIONS));
    let tcp_task = tcp.map(|(listener, token)| {
        log::info!(
            "skiff host: also on tcp {:?} (bearer token required)",
            listener.local_addr()
        );
        let router = crate::api::router(host.clone(), Some(token));
        tokio::spawn(serve_tcp(listener, router, MAX_TCP_CONNECTIONS))
    });
    let mut term = signal(SignalKind::terminate()).map_err(io_err("cannot handle", "SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("cannot handle", "SIGINT"))?;
    tokio::select! {
        _ = term.recv() => log::info!("skiff host: SIGTERM; VMs keep running"),
        _ = int.recv() => log::info!("skiff host: SIGINT; VMs keep running"),
        r = unix_task => log::error!("skiff host: unix listener ended: {r:?}"),
    }
    if let Some(task) = tcp_task {
        task.abort();
    }
    host.networks().shutdown().await;
    let _ = std::fs::remove_file(&options.socket);
    Ok(())
}
