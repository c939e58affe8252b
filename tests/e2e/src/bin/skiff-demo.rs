//! `cargo xtask demo` runs this inside the emulated host (or directly): it boots real
//! Linux guests with Skiff and with QEMU, streams their consoles and compares them.

use std::io::Write;
use std::time::Duration;

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
    if rows.iter().any(|r| !r.ok) {
        std::process::exit(1);
    }
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
