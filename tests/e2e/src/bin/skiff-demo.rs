//! `cargo xtask demo` runs this inside the emulated host (or directly): it boots real
//! Linux guests with Skiff and with QEMU, streams their consoles and compares them; then it
//! starts the host daemon, creates several VMs through `skiff vm` and lists them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_e2e::{GuestSpec, TestEnv, Vm, Vmm, GUEST_EXIT, INIT_READY};

const GUEST_CMD: &str = "echo \"Hello from $(uname -sr) on $(nproc) vCPUs\"; \
     grep -E 'MemTotal|MemFree' /proc/meminfo; \
     echo \"virtio devices: $(ls /sys/bus/virtio/devices 2>/dev/null | wc -l)\"; \
     echo \"uptime: $(cut -d' ' -f1 /proc/uptime) s\"";

struct Row {
    vmm: &'static str,
    init_ready: Option<Duration>,
    total: Duration,
    rss_kib: Option<u64>,
    ok: bool,
}

fn main() {
    let env = TestEnv::get();
    println!("== Skiff demo: booting Debian's cloud kernel + a busybox initramfs ==");
    let mut rows = Vec::new();
    if env.skiff_bin.exists() {
        rows.push(boot("skiff", GuestSpec::new(Vmm::Skiff)));
    } else {
        println!(
            "(no skiff binary at {}: showing QEMU only)",
            env.skiff_bin.display()
        );
    }
    rows.push(boot("qemu", GuestSpec::new(Vmm::Qemu)));

    println!();
    println!(
        "{:<8} {:>16} {:>12} {:>18}",
        "VMM", "init ready (s)", "total (s)", "VMM RSS (MiB)"
    );
    for row in &rows {
        let secs =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()));
        let rss = row
            .rss_kib
            .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let status = if row.ok { "" } else { "  (failed)" };
        println!(
            "{:<8} {:>16} {:>12} {:>18}{status}",
            row.vmm,
            secs(row.init_ready),
            secs(Some(row.total)),
            rss
        );
    }
    println!("(times are inflated by the emulated host's software CPU: compare within one run)");
    let daemon_ok = !env.skiff_bin.exists() || daemon_demo(env);
    if rows.iter().any(|r| !r.ok) || !daemon_ok {
        std::process::exit(1);
    }
}

/// VMs under the daemon, each printing a greeting and staying up.
const DAEMON_VMS: [&str; 3] = ["web-1", "web-2", "db-1"];

/// `skiff host` with three VMs created through the CLI, then `skiff vm ls`.
fn daemon_demo(env: &TestEnv) -> bool {
    println!("\n== The host daemon: skiff host, and VMs through skiff vm ==");
    let dir = env.scratch("demo-daemon");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        println!("cannot create {}: {e}", dir.display());
        return false;
    }
    let socket = dir.join("skiff.sock");
    let mut daemon = match Command::new(&env.skiff_bin)
        .arg("host")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(&socket)
        .args(
            env.image_dirs()
                .into_iter()
                .flat_map(|d| [std::path::PathBuf::from("--image-dir"), d]),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("cannot start skiff host: {e}");
            return false;
        }
    };
    let ok = drive_daemon(env, &dir, &socket);
    for name in DAEMON_VMS {
        let _ = skiff_vm(env, &socket, &["rm", name]);
    }
    stop(&mut daemon);
    ok
}

fn drive_daemon(env: &TestEnv, dir: &Path, socket: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while skiff_vm(env, socket, &["ls"]).is_none() {
        if Instant::now() > deadline {
            println!("skiff host did not answer on {}", socket.display());
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for name in DAEMON_VMS {
        let file = match write_spec(env, dir, name) {
            Ok(file) => file,
            Err(e) => {
                println!("cannot write the spec of {name}: {e}");
                return false;
            }
        };
        let file = file.display().to_string();
        println!("$ skiff vm create -f {name}.toml --start");
        match skiff_vm(env, socket, &["create", "-f", &file, "--start"]) {
            Some(out) => print!("{out}"),
            None => return false,
        }
    }
    // Wait for each guest's greeting in its console log.
    let deadline = Instant::now() + Duration::from_secs(180);
    for name in DAEMON_VMS {
        loop {
            let logs = skiff_vm(env, socket, &["logs", name]).unwrap_or_default();
            if let Some(line) = logs.lines().find(|l| l.contains("Hello from")) {
                println!("{name:>6} │ {}", line.trim());
                break;
            }
            if Instant::now() > deadline {
                println!("{name}: no greeting on its console");
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    println!("$ skiff vm ls");
    let Some(table) = skiff_vm(env, socket, &["ls"]) else {
        return false;
    };
    print!("{table}");
    table
        .lines()
        .skip(1)
        .filter(|l| l.contains(" running "))
        .count()
        == DAEMON_VMS.len()
}

fn write_spec(env: &TestEnv, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let cmd = format!(
        "echo \"Hello from {name}: $(uname -r), $(nproc) vCPU\"; while true; do sleep 60; done"
    );
    let cmdline = GuestSpec::new(Vmm::Skiff)
        .cmd(cmd)
        .no_poweroff()
        .kernel_cmdline();
    let spec = format!(
        "name = \"{name}\"\nvcpus = 1\nmemory = \"128M\"\nkernel = \"{}\"\ninitrd = \"{}\"\n\
         cmdline = \"{cmdline}\"\nrestart = \"on-failure\"\n",
        env.kernel.display(),
        env.initrd.display()
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, spec)?;
    Ok(file)
}

/// `skiff vm --socket S ARGS...`: its stdout, or None (after printing why) on failure.
fn skiff_vm(env: &TestEnv, socket: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(&env.skiff_bin)
        .arg("vm")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .ok()?;
    if out.status.success() {
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        if args != ["ls"] {
            print!("{}", String::from_utf8_lossy(&out.stderr));
        }
        None
    }
}

fn stop(child: &mut Child) {
    // SAFETY: signalling our own child; SIGTERM lets the daemon remove its socket.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// Boots one guest, streaming its console with a prefix.
fn boot(name: &'static str, spec: GuestSpec) -> Row {
    let spec = spec.vcpus(2).cmd(GUEST_CMD);
    println!(
        "\n-- {name}: {} vCPUs, {} MiB --",
        spec.vcpus, spec.memory_mib
    );
    let mut row = Row {
        vmm: name,
        init_ready: None,
        total: Duration::ZERO,
        rss_kib: None,
        ok: false,
    };
    let mut vm = match spec.spawn() {
        Ok(vm) => vm,
        Err(err) => {
            println!("{name}: {err}");
            return row;
        }
    };
    stream(name, &mut vm, &mut row);
    match vm.wait(Duration::from_secs(60)) {
        Ok(out) => {
            row.init_ready = out.init_ready;
            row.total = out.total;
            row.ok = out.guest_status == Some(0) && out.vmm_status.success();
            if !row.ok {
                println!("{name}: {out}");
            }
        }
        Err(err) => println!("{name}: {err}"),
    }
    row
}

fn stream(name: &str, vm: &mut Vm, row: &mut Row) {
    let mut stdout = std::io::stdout();
    while let Ok(Some(line)) = vm.next_line(Duration::from_secs(120)) {
        if line.contains(INIT_READY) || line.contains(GUEST_EXIT) {
            // Sample the VMM's memory while the guest is up.
            row.rss_kib = vm.rss_kib().ok().max(row.rss_kib);
        }
        let _ = writeln!(stdout, "{name:>5} │ {line}");
        let _ = stdout.flush();
        if line.contains(GUEST_EXIT) {
            break;
        }
    }
}
