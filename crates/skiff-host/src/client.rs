//! An HTTP client of the daemon's API over its unix socket or TCP, for the CLI and tests.

use std::io;
use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

/// Where the daemon listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    /// host:port
    Tcp(String),
}

#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
}

/// A response: status and body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` field of an error body, or the whole body.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<crate::model::ErrorBody>(&self.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| self.text())
    }
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        Client { endpoint, token }
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> io::Result<Response> {
        self.request_streaming(method, path, body, &mut |_| {})
            .await
    }

    /// The same, handing each piece of the body to `on_data` as it arrives (an import's
    /// progress lines); the response still holds the whole body.
    pub async fn request_streaming(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        match &self.endpoint {
            Endpoint::Unix(socket) => {
                let stream = UnixStream::connect(socket).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot reach the daemon at {}: {e}", socket.display()),
                    )
                })?;
                self.exchange(stream, method, path, body, on_data).await
            }
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot reach the daemon at {addr}: {e}"))
                })?;
                self.exchange(stream, method, path, body, on_data).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        stream: S,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("API connection: {e}");
            }
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "skiff");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let mut incoming = response.into_body();
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(io::Error::other)?;
            if let Some(data) = frame.data_ref() {
                on_data(data);
                body.extend_from_slice(data);
            }
        }
        Ok(Response { status, body })
    }

    /// `request_streaming` from synchronous code.
    pub fn blocking_streaming(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Response> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.request_streaming(method, path, body, on_data))
    }

    /// The same, from synchronous code (the CLI, tests): a small runtime per call.
    pub fn blocking(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> io::Result<Response> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.request(method, path, body))
    }
}
