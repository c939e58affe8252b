//! How the CLI reaches the host daemon: `--socket` (or SKIFF_SOCKET), or `--tcp ADDR` with
//! `--token-file`; API errors become one line.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::de::DeserializeOwned;
use skiff_host::{Client, Endpoint};

pub const DEFAULT_SOCKET: &str = "/run/skiff/skiff.sock";

#[derive(Args, Clone)]
pub struct DaemonAddress {
    /// The daemon's unix socket.
    #[arg(long, global = true, env = "SKIFF_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Reach the daemon over TCP instead (needs --token-file).
    #[arg(long, global = true, env = "SKIFF_TCP", value_name = "HOST:PORT")]
    tcp: Option<String>,
    /// A file holding the bearer token for --tcp.
    #[arg(long, global = true, env = "SKIFF_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl DaemonAddress {
    pub fn client(&self) -> Result<Client> {
        match &self.tcp {
            Some(addr) => {
                let path = self
                    .token_file
                    .as_ref()
                    .context("--tcp needs --token-file")?;
                let token = skiff_host::access::read_token_file(path)?;
                Ok(Client::new(Endpoint::Tcp(addr.clone()), Some(token)))
            }
            None => Ok(Client::new(Endpoint::Unix(self.socket.clone()), None)),
        }
    }
}

/// Sends a request; a non-2xx answer becomes an error carrying the daemon's message.
pub fn call(client: &Client, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>> {
    let response = client.blocking(method, path, body)?;
    if !(200..300).contains(&response.status) {
        bail!("{} (HTTP {})", response.error_message(), response.status);
    }
    Ok(response.body)
}

pub fn call_json<T: DeserializeOwned>(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<T> {
    let body = call(client, method, path, body)?;
    serde_json::from_slice(&body).context("the daemon's answer is not what this CLI expects")
}
