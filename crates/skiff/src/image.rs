//! `skiff image import|ls|inspect|rm`: the daemon's image store.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use skiff_api::image::{Image, ImportEvent, ImportRequest};
use skiff_api::ByteSize;

use crate::api_client::{call, DaemonAddress};

#[derive(Args)]
pub struct ImageArgs {
    #[command(flatten)]
    address: DaemonAddress,
    #[command(subcommand)]
    action: ImageAction,
}

#[derive(Subcommand)]
enum ImageAction {
    /// Import a raw or qcow2 disk image (a file on the daemon's machine, inside its image
    /// directories) that boots its own kernel.
    Import {
        file: PathBuf,
        /// Default: the file name without its extension.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images.
    #[command(alias = "list")]
    Ls {
        /// Print the JSON the API returns.
        #[arg(long)]
        json: bool,
    },
    /// Everything the store knows about an image (JSON).
    Inspect { image: String },
    /// Remove an image name (and the image with its last name); refused while a VM uses it.
    Rm { image: String },
}

pub fn run(args: ImageArgs) -> Result<u8> {
    let client = args.address.client()?;
    match args.action {
        ImageAction::Import { file, name } => import(&client, &file, name),
        ImageAction::Ls { json } => {
            let body = call(&client, "GET", "/images", None)?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            } else {
                let images: Vec<Image> = serde_json::from_slice(&body)?;
                print!("{}", table(&images));
            }
            Ok(0)
        }
        ImageAction::Inspect { image } => {
            let body = call(&client, "GET", &format!("/images/{image}"), None)?;
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(0)
        }
        ImageAction::Rm { image } => {
            call(&client, "DELETE", &format!("/images/{image}"), None)?;
            println!("{image} removed");
            Ok(0)
        }
    }
}

/// Sends the import and shows its progress on stderr as the daemon reports it: one
/// updated line on a terminal, a line per tenth otherwise.
fn import(client: &skiff_host::Client, file: &std::path::Path, name: Option<String>) -> Result<u8> {
    let path = std::path::absolute(file)?;
    let body = serde_json::to_vec(&ImportRequest {
        path: path.display().to_string(),
        name,
    })?;
    let terminal = std::io::stderr().is_terminal();
    let mut pending = Vec::new();
    let mut outcome: Option<ImportEvent> = None;
    let mut shown_tenth = None;
    let mut on_data = |data: &[u8]| {
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match serde_json::from_slice::<ImportEvent>(&line) {
                Ok(ImportEvent::Progress { done, total }) => {
                    let percent = (done * 100).checked_div(total).unwrap_or(100);
                    let text = format!(
                        "importing {}: {percent}% ({} of {})",
                        path.display(),
                        ByteSize(done),
                        ByteSize(total)
                    );
                    if terminal {
                        eprint!("\r{text}");
                        let _ = std::io::stderr().flush();
                    } else if shown_tenth != Some(percent / 10) {
                        shown_tenth = Some(percent / 10);
                        eprintln!("{text}");
                    }
                }
                Ok(other) => outcome = Some(other),
                Err(_) => {}
            }
        }
    };
    let response = client
        .blocking_streaming("POST", "/images", Some(body), &mut on_data)
        .context("the import did not finish")?;
    if terminal {
        eprintln!();
    }
    if !(200..300).contains(&response.status) {
        bail!("{} (HTTP {})", response.error_message(), response.status);
    }
    match outcome {
        Some(ImportEvent::Image(image)) => {
            println!(
                "{} sha256:{} {} ({})",
                image.names.join(","),
                image.digest,
                ByteSize(image.virtual_size),
                image.boot.kernel
            );
            Ok(0)
        }
        Some(ImportEvent::Error(e)) => bail!("{e}"),
        _ => bail!("the daemon ended the import without saying how it went"),
    }
}

/// NAME DIGEST SIZE ON-DISK KERNEL USERS, one line per name.
fn table(images: &[Image]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "DIGEST".into(),
        "SIZE".into(),
        "ON-DISK".into(),
        "KERNEL".into(),
        "USERS".into(),
    ]];
    for image in images {
        let names = if image.names.is_empty() {
            vec!["-".to_string()]
        } else {
            image.names.clone()
        };
        for name in names {
            rows.push([
                name,
                image.digest.chars().take(12).collect(),
                ByteSize(image.virtual_size).to_string(),
                ByteSize(image.disk_usage).to_string(),
                image.boot.kernel.clone(),
                if image.users.is_empty() {
                    "-".into()
                } else {
                    image.users.join(",")
                },
            ]);
        }
    }
    crate::table::render(&rows)
}

/// Checks that a user-given `--disk-size` parses.
pub fn parse_size(text: &str) -> Result<ByteSize> {
    text.parse::<ByteSize>()
        .map_err(|e| anyhow::anyhow!("--disk-size {text}: {e}"))
}
