//! Bridges over rtnetlink (no `ip` command): create a network's bridge with the gateway's
//! address and bring it up, remove it, and list links by name prefix. Taps are not made
//! here: the kernel creates taps only through /dev/net/tun (it refuses RTM_NEWLINK for
//! them), and the VMM's jailer opens each NIC's tap and enslaves it to the bridge before it
//! enters its jail, so a tap lives exactly as long as its VMM.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::{new_connection, Handle, LinkBridge, LinkUnspec};

use crate::subnet::Subnet;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{what} `{name}`: {source}")]
    Request {
        what: &'static str,
        name: String,
        source: rtnetlink::Error,
    },
    #[error("bridge `{0}` was created but is not listed")]
    Vanished(String),
}

/// Runs `f` with a fresh rtnetlink connection, ended afterwards.
async fn with_handle<T, F>(f: impl FnOnce(Handle) -> F) -> Result<T, LinkError>
where
    F: std::future::Future<Output = Result<T, LinkError>>,
{
    let (connection, handle, _) = new_connection()?;
    let task = tokio::spawn(connection);
    let result = f(handle).await;
    task.abort();
    result
}

fn request(what: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let name = name.to_string();
    move |source| LinkError::Request { what, name, source }
}

/// The index of the link `name`, if there is one.
async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(request("looking up link", name)(e)),
    }
}

/// Makes the bridge `name` exist with the subnet's gateway address, up. Idempotent: a
/// daemon restart finds its bridges as it left them.
pub async fn ensure_bridge(name: &str, subnet: &Subnet) -> Result<(), LinkError> {
    with_handle(|handle| async move {
        let index = match index_of(&handle, name).await? {
            Some(index) => index,
            None => {
                handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(request("creating bridge", name))?;
                index_of(&handle, name)
                    .await?
                    .ok_or_else(|| LinkError::Vanished(name.to_string()))?
            }
        };
        handle
            .address()
            .add(index, IpAddr::V4(subnet.gateway()), subnet.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(request("adding the gateway address to", name))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(request("bringing up", name))
    })
    .await
}

/// Removes the link `name`; one that is not there is fine.
pub async fn remove_link(name: &str) -> Result<(), LinkError> {
    with_handle(|handle| async move {
        match index_of(&handle, name).await? {
            Some(index) => handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(request("removing link", name)),
            None => Ok(()),
        }
    })
    .await
}

/// Whether the link `name` exists.
pub async fn exists(name: &str) -> Result<bool, LinkError> {
    with_handle(|handle| async move { Ok(index_of(&handle, name).await?.is_some()) }).await
}

/// Turns on IPv4 forwarding, which NAT and published ports need.
pub fn enable_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}
