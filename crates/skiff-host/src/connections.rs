//! Serving the API's connections within limits, so that clients who never authenticate
//! cannot exhaust the daemon: at most `max` connections per listener at once (more are closed
//! as they arrive), a request's headers within [`HEADER_READ_TIMEOUT`], and a connection
//! with no request in progress closed after [`IDLE_TIMEOUT`]. The daemon's descriptor limit
//! is raised to its hard limit at start ([`raise_fd_limit`]). hyper serves each connection
//! (HTTP/1.1), the axum router answers.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;

/// A client must send a request's headers within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in progress for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connections served at once; more are closed as they arrive.
pub const MAX_TCP_CONNECTIONS: usize = 1024;
/// Unix-socket connections served at once (root's own clients).
pub const MAX_UNIX_CONNECTIONS: usize = 256;

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (the connection caps,
/// the VMs' descriptors and the daemon's own must fit); returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Serves `router` on TCP connections until the listener fails.
pub async fn serve_tcp(listener: TcpListener, router: Router, max: usize) -> io::Result<()> {
    serve(router, max, || async {
        let (stream, _) = listener.accept().await?;
        Ok(stream)
    })
    .await
}

/// Serves `router` on unix-socket connections until the listener fails.
pub async fn serve_unix(listener: UnixListener, router: Router, max: usize) -> io::Result<()> {
    serve(router, max, || async {
        let (stream, _) = listener.accept().await?;
        Ok(stream)
    })
    .await
}

async fn serve<Io, F>(router: Router, max: usize, accept: impl Fn() -> F) -> io::Result<()>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = io::Result<Io>>,
{
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let io = match accept().await {
            Ok(io) => io,
            // Out of descriptors or memory for now: the listener itself is fine.
            Err(e) if is_transient(&e) => {
                log::warn!("API: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!("API: {max} connections open; one more closed");
            continue; // dropping `io` closes it
        };
        let router = router.clone();
        tokio::spawn(async move {
            serve_connection(io, router).await;
            drop(slot);
        });
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    )
}

/// Requests in progress on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

/// One request in progress, from its headers to the end of its answer's body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(activity)
    }

    /// A piece of the body went out; the closure that sends them holds `self` until the
    /// body ends (calling this makes it hold `self` at all).
    fn still_sending(&self) {
        self.0.touch();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn touch(&self) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Returns once the connection has had no request in progress for `IDLE_TIMEOUT`.
    async fn idle(&self) {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let deadline = *self.since.lock().unwrap_or_else(|p| p.into_inner()) + IDLE_TIMEOUT;
            if Instant::now() >= deadline && self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

async fn serve_connection<Io>(io: Io, router: Router)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        since: Mutex::new(Instant::now()),
    });
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(tracked.clone());
        let response = router.clone().oneshot(request.map(axum::body::Body::new));
        async move {
            // A request is in progress until its body is sent: an image import streams its
            // progress for minutes.
            response.await.map(|response| {
                response.map(|body| {
                    axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                        in_flight.still_sending();
                        f
                    }))
                })
            })
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = http.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                log::debug!("API connection: {e}");
            }
        }
        () = activity.idle() => log::debug!("API connection idle for {IDLE_TIMEOUT:?}: closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer whose body takes longer than IDLE_TIMEOUT to send (an image import's
    /// progress) is not cut: the request is in progress until its body ends.
    #[tokio::test]
    async fn a_slow_streamed_answer_outlives_the_idle_timeout() {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("s.sock");
        let step = IDLE_TIMEOUT / 2 + Duration::from_secs(1);
        let router = Router::new().route(
            "/slow",
            axum::routing::get(move || async move {
                let chunks = futures_util::stream::unfold(0u8, move |n| async move {
                    if n == 3 {
                        return None;
                    }
                    if n > 0 {
                        tokio::time::sleep(step).await;
                    }
                    Some((Ok::<_, std::convert::Infallible>(vec![b'a' + n]), n + 1))
                });
                axum::body::Body::from_stream(chunks)
            }),
        );
        let listener = UnixListener::bind(&socket).expect("bind");
        tokio::spawn(serve_unix(listener, router, 4));
        let client = crate::Client::new(crate::Endpoint::Unix(socket), None);
        let response = client.request("GET", "/slow", None).await.expect("answer");
        assert_eq!((response.status, response.text().as_str()), (200, "abc"));
    }
}
