//! The `skiff` command's parts that the lean VMM binary (`skiff-vmm`) shares with it:
//! running one VM in this process (`skiff run`), with its console, signals, cgroup and
//! jail.

pub mod cgroup;
pub mod console;
pub mod jail;
pub mod logger;
pub mod run;
pub mod signals;

/// The error and its causes on one line, leaving out causes that a message already quotes.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Ends the process with the outcome of a command: its exit code, or its error on one line.
pub fn exit_with(result: anyhow::Result<u8>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("skiff: error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
