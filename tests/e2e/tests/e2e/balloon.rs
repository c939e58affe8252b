//! virtio-balloon with Debian's stock guest kernel (issue 4): free page reporting returns
//! memory the guest freed; a balloon target set over the control socket takes memory from
//! the guest and keeps the VMM's resident set down; deflating gives it back; the guest's
//! statistics and the balloon's figures are readable over the control socket.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_e2e::{GuestSpec, TestEnv, Vm, Vmm};

const MIB: u64 = 1 << 20;

/// Runs `skiff ctl --socket SOCKET ARGS...`; returns (success, stdout + stderr).
fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(&TestEnv::get().skiff_bin)
        .args(["ctl", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("skiff ctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The number after `"key": ` in pretty-printed JSON.
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\": "))? + key.len() + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Polls the balloon's `actual` until `done(actual)` or `timeout`; returns the time taken.
fn wait_actual(socket: &Path, timeout: Duration, done: impl Fn(u64) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let (ok, stats) = ctl(socket, &["stats"]);
        assert!(ok, "{stats}");
        if json_u64(&stats, "actual_bytes").is_some_and(&done) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "balloon never got there:\n{stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_mib(vm: &Vm) -> u64 {
    vm.rss_kib().expect("VmRSS") / 1024
}

/// The last `mem_available_kib=` the guest printed, in MiB.
fn last_available_mib(vm: &Vm) -> u64 {
    vm.console()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mem_available_kib="))
        .filter_map(|v| v.parse::<u64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no meminfo\n{}", vm.console()))
        / 1024
}

#[test]
fn free_page_reporting_inflate_deflate_and_stats() {
    let env = TestEnv::get();
    let socket = env.scratch("balloon.sock");
    let t = "skiff-guest-tool";
    let mut vm = GuestSpec::new(Vmm::Skiff)
        .memory_mib(512)
        .vmm_arg("--control-socket")
        .vmm_arg(&socket)
        .cmd(format!(
            "{t} meminfo; echo P-BOOTED; {t} hold 400 --seconds 4; echo P-FREED; \
             read x; {t} meminfo; echo P-INFLATED; \
             read x; {t} meminfo; {t} touch 400 && echo P-TOUCHED-AGAIN; {t} meminfo"
        ))
        .timeout(Duration::from_secs(300))
        .spawn()
        .expect("spawn");
    vm.wait_for("P-BOOTED", Duration::from_secs(120))
        .expect("boots");
    let booted_available = last_available_mib(&vm);

    // 1. Free page reporting: 400 MiB held, then freed; the VMM gives it back.
    vm.wait_for("held_mib=", Duration::from_secs(120))
        .expect("guest touches 400 MiB");
    let held = rss_mib(&vm);
    assert!(
        held >= 400,
        "VmRSS {held} MiB while the guest holds 400 MiB"
    );
    vm.wait_for("released=", Duration::from_secs(60))
        .expect("guest frees");
    let freed_at = Instant::now();
    let mut rss = held;
    while held - rss.min(held) < 300 && freed_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        rss = rss_mib(&vm);
    }
    let took = freed_at.elapsed();
    eprintln!("free page reporting: VmRSS {held} MiB -> {rss} MiB in {took:?}");
    assert!(
        held - rss.min(held) >= 300,
        "VmRSS {held} -> {rss} MiB after {took:?}\n{}",
        vm.console()
    );
    let (ok, stats) = ctl(&socket, &["stats"]);
    assert!(ok, "{stats}");
    assert!(
        json_u64(&stats, "reported_bytes").unwrap_or(0) >= 300 * MIB,
        "{stats}"
    );
    // The guest's own figures arrive on the stats queue.
    let total = json_u64(&stats, "total_bytes").unwrap_or(0);
    assert!(total > 400 * MIB && total <= 512 * MIB, "{stats}");
    assert!(
        json_u64(&stats, "available_bytes").unwrap_or(0) > 200 * MIB,
        "{stats}"
    );
    assert!(json_u64(&stats, "minor_faults").is_some(), "{stats}");

    // 2. A target beyond the guest's memory is refused, clearly.
    let (ok, refused) = ctl(&socket, &["balloon", "1024"]);
    assert!(
        !ok && refused.contains("more than the guest's 512 MiB"),
        "{refused}"
    );

    // 3. Inflate to 256 MiB: the guest's available memory falls, the VMM stays small.
    let (ok, text) = ctl(&socket, &["balloon", "256"]);
    assert!(ok, "{text}");
    let inflate = wait_actual(&socket, Duration::from_secs(120), |a| a == 256 * MIB);
    eprintln!(
        "inflate 256 MiB: {inflate:?} ({:.0} MiB/s)",
        256.0 / inflate.as_secs_f64()
    );
    let (_, stats) = ctl(&socket, &["stats"]);
    assert_eq!(json_u64(&stats, "target_bytes"), Some(256 * MIB), "{stats}");
    let rss = rss_mib(&vm);
    assert!(rss < 280, "VmRSS {rss} MiB with a 256 MiB balloon\n{stats}");
    vm.send_line("go").expect("console");
    vm.wait_for("P-INFLATED", Duration::from_secs(60))
        .expect("meminfo");
    let inflated_available = last_available_mib(&vm);
    eprintln!("MemAvailable: {booted_available} MiB at boot, {inflated_available} MiB inflated");
    assert!(
        inflated_available + 256 <= booted_available + 32,
        "MemAvailable {booted_available} -> {inflated_available} MiB\n{}",
        vm.console()
    );

    // 4. Deflate: the guest has its memory again.
    let (ok, text) = ctl(&socket, &["balloon", "0"]);
    assert!(ok, "{text}");
    let deflate = wait_actual(&socket, Duration::from_secs(120), |a| a == 0);
    eprintln!("deflate 256 MiB: {deflate:?}");
    vm.send_line("go").expect("console");
    vm.wait_for("P-TOUCHED-AGAIN", Duration::from_secs(120))
        .expect("guest allocates 400 MiB after deflating");
    let out = vm.wait(Duration::from_secs(60)).expect("guest ends");
    assert_eq!(out.guest_status, Some(0), "{out}");
    let deflated_available = out
        .console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mem_available_kib="))
        .filter_map(|v| v.parse::<u64>().ok())
        .nth(2)
        .unwrap_or(0)
        / 1024;
    assert!(
        deflated_available + 32 >= booted_available,
        "MemAvailable {booted_available} -> {deflated_available} MiB after deflating\n{out}"
    );
}
