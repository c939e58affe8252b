//! The Debian test image (`cargo xtask test-image`) under the host daemon (issue 12):
//! imported, made into a VM that boots the image's own kernel and initrd, reached over
//! SSH and HTTP on a tap on a bridge with a static address from the NoCloud seed, and
//! powered off from inside; the same disk as raw, qcow2 v2 and v3 (one stored image), and
//! its root file system alone as a second layout.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use skiff_api::model::{Event, EventKind, VmState};
use skiff_e2e::TestEnv;

use crate::daemon::Daemon;

const BRIDGE: &str = "skimgbr0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 4, 1);
/// What the image's web server (lighttpd) answers with (xtask/src/test_image.rs).
const PAGE: &str = "hello from a Skiff guest";
/// The image's root file system UUID and size (xtask/src/test_image.rs).
const ROOT_UUID: &str = "5c1ff000-1a6e-4a3b-9c2d-000000000012";
const ROOT_MIB: u64 = 1536;
/// A Debian boot with systemd and cloud-init inside the emulated host (guest code under
/// nested virtualization on a software CPU) takes minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(1200);

fn test_image() -> &'static Path {
    TestEnv::get().test_image.as_deref().expect(
        "SKIFF_TEST_IMAGE is not set: run the images::debian tests through `cargo xtask e2e`, \
         which builds the Debian test image and ships it",
    )
}

/// Runs `command`, killed after `limit`; returns its output.
fn run_for(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `skiff vm ssh NAME -i KEY -- CMD` against `daemon`.
fn ssh(daemon: &Daemon, name: &str, key: &Path, cmd: &str, limit: Duration) -> Output {
    run_for(
        Command::new(&TestEnv::get().skiff_bin)
            .arg("vm")
            .arg("--socket")
            .arg(daemon.socket())
            .args(["ssh", name, "-i"])
            .arg(key)
            .args(["--", cmd]),
        limit,
    )
}

/// `ssh` that must succeed; returns its stdout.
fn ssh_ok(daemon: &Daemon, name: &str, key: &Path, cmd: &str) -> String {
    let out = ssh(daemon, name, key, cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "ssh {name} {cmd:?}: {:?}\n{}",
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new ed25519 key pair without passphrase: (private, public).
fn key_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("id_ed25519");
    let out = run_for(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f"])
            .arg(&key),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "ssh-keygen: {}", text(&out));
    (key.clone(), key.with_extension("pub"))
}

fn http_get(host: &str) -> String {
    let mut stream = TcpStream::connect_timeout(
        &format!("{host}:80").parse().expect("address"),
        Duration::from_secs(10),
    )
    .expect("connect to the guest's web server");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .expect("request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The VM's console so far (for failure messages).
fn console(daemon: &Daemon, name: &str) -> String {
    std::fs::read_to_string(daemon.info(name).console.log).unwrap_or_default()
}

/// Waits until `skiff vm ssh NAME -- true` works, failing early if the VM stops; returns
/// how long it took from `since`.
fn wait_for_ssh(daemon: &Daemon, name: &str, key: &Path, since: Instant) -> Duration {
    loop {
        let out = ssh(daemon, name, key, "true", Duration::from_secs(60));
        if out.status.success() {
            return since.elapsed();
        }
        let info = daemon.info(name);
        assert!(
            info.state == VmState::Running,
            "{name} is {:?} ({:?}) before SSH answered; console:\n{}\ndaemon:\n{}",
            info.state,
            info.reason,
            console(daemon, name),
            daemon.log()
        );
        assert!(
            since.elapsed() < BOOT_LIMIT,
            "{name}: no SSH within {BOOT_LIMIT:?} (last try: {}); console:\n{}",
            text(&out),
            console(daemon, name)
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// A daemon with the bridge and an SSH key pair, for the tests below.
struct Setup {
    dir: PathBuf,
    daemon: Daemon,
    key: PathBuf,
    public: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = TestEnv::get().scratch(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    crate::net::set_up_bridge(BRIDGE, HOST_IP).expect("bridge in the host (needs root)");
    let daemon = Daemon::start_with(&dir, None, &[]);
    let (key, public) = key_pair(&dir);
    Setup {
        dir,
        daemon,
        key,
        public,
    }
}

impl Setup {
    /// `skiff image import FILE --name NAME`; returns the digest.
    fn import(&self, file: &Path, name: &str) -> String {
        let started = Instant::now();
        let out = run_for(
            Command::new(&TestEnv::get().skiff_bin)
                .arg("image")
                .arg("--socket")
                .arg(self.daemon.socket())
                .arg("import")
                .arg(file)
                .args(["--name", name]),
            Duration::from_secs(900),
        );
        let imported = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && imported.contains(" sha256:"),
            "import {}: {}\n{}",
            file.display(),
            text(&out),
            self.daemon.log()
        );
        eprintln!(
            "DEBIAN-BOOT: imported {} in {:.1} s: {}",
            file.display(),
            started.elapsed().as_secs_f64(),
            imported.trim()
        );
        let inspect: serde_json::Value = self.daemon.get(&format!("/images/{name}"));
        inspect["digest"].as_str().expect("digest").to_string()
    }

    /// `skiff vm create NAME --image IMAGE ... --start`, the NIC a tap on the bridge with
    /// the static address `ip`.
    fn create(&self, name: &str, image: &str, tap: &str, ip: &str, memory: &str) {
        let nic = format!("tap={tap},bridge={BRIDGE}");
        let ip = format!("{ip}/24");
        self.daemon.vm_ok(&[
            "create",
            name,
            "--image",
            image,
            "--ssh-key",
            self.public.to_str().expect("utf-8 path"),
            "--memory",
            memory,
            "--nic",
            &nic,
            "--ip",
            &ip,
            "--start",
        ]);
        let info = self.daemon.info(name);
        assert!(
            info.jail.is_some(),
            "the daemon jails its VMMs by default: {info:?}"
        );
    }

    fn ssh_ok(&self, name: &str, cmd: &str) -> String {
        ssh_ok(&self.daemon, name, &self.key, cmd)
    }

    /// Waits for SSH, then checks what every boot of the image must show: its own kernel
    /// with the root by UUID, the seed's hostname, systemd `running` with no failed unit,
    /// the web page at `ip`. Returns the device the root is mounted from.
    fn check_guest(&self, name: &str, ip: &str, started: Instant) -> String {
        let daemon = &self.daemon;
        let to_ssh = wait_for_ssh(daemon, name, &self.key, started);
        eprintln!(
            "DEBIAN-BOOT: {name}: vm create --start to SSH: {:.1} s",
            to_ssh.as_secs_f64()
        );

        // Its own kernel, with the root found by the file system's UUID.
        let cmdline = self.ssh_ok(name, "cat /proc/cmdline");
        assert!(
            cmdline.contains(&format!("root=UUID={ROOT_UUID}")),
            "{cmdline}"
        );
        let release = self.ssh_ok(name, "uname -r");
        assert!(release.trim().ends_with("cloud-amd64"), "kernel {release}");
        assert_eq!(self.ssh_ok(name, "cat /etc/hostname").trim(), name);

        // systemd: multi-user.target reached, and no failed unit.
        let state = ssh(
            daemon,
            name,
            &self.key,
            "systemctl is-system-running --wait",
            Duration::from_secs(600),
        );
        let failed = self.ssh_ok(name, "systemctl list-units --failed --plain --no-legend");
        let target = self.ssh_ok(name, "systemctl is-active multi-user.target");
        eprintln!(
            "DEBIAN-BOOT: {name}: system {} at {:.1} s; failed units: {failed:?}",
            String::from_utf8_lossy(&state.stdout).trim(),
            started.elapsed().as_secs_f64(),
        );
        assert_eq!(target.trim(), "active", "multi-user.target");
        // No unit may fail (docs/images.md: the two the recipe once caused, and why).
        let failed: Vec<&str> = failed.lines().filter(|l| !l.trim().is_empty()).collect();
        if !failed.is_empty() {
            let journal = ssh(
                daemon,
                name,
                &self.key,
                "grep -A3 WARNING /var/log/cloud-init.log; journalctl -b --no-pager -p warning | tail -60",
                Duration::from_secs(120),
            );
            panic!("{name}: failed units: {failed:?}\n{}", text(&journal));
        }
        assert_eq!(
            String::from_utf8_lossy(&state.stdout).trim(),
            "running",
            "systemctl is-system-running --wait: {}",
            text(&state)
        );

        let page = http_get(ip);
        assert!(page.contains(PAGE), "GET http://{ip}/: {page}");
        self.ssh_ok(name, "findmnt -n -o SOURCE /")
            .trim()
            .to_string()
    }

    /// `poweroff` inside: the VM ends stopped, its VMM having exited normally.
    fn power_off(&self, name: &str, started: Instant) {
        let daemon = &self.daemon;
        let _ = ssh(daemon, name, &self.key, "poweroff", Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(600);
        while daemon.info(name).state != VmState::Stopped {
            assert!(
                Instant::now() < deadline,
                "{name} did not stop after poweroff: {:?}\n{}",
                daemon.info(name),
                console(daemon, name)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let events: Vec<Event> = daemon.get(&format!("/vms/{name}/events"));
        let stopped = events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Stopped)
            .expect("a stopped event");
        assert_eq!(stopped.message, "exited normally", "{events:?}");
        eprintln!(
            "DEBIAN-BOOT: {name}: stopped {:.1} s after create",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Import, create and start under the (jailing) daemon; the guest boots its own kernel,
/// systemd reaches multi-user.target with no failed unit, SSH and HTTP answer, and
/// `poweroff` inside leaves the VM stopped after a clean exit.
#[test]
fn debian_boots_its_own_kernel_and_serves_a_page() {
    let s = setup("images-debian");
    s.import(test_image(), "debian-12");
    let started = Instant::now();
    s.create("web1", "debian-12", "skimgtap0", "10.0.4.15", "1G");
    let root = s.check_guest("web1", "10.0.4.15", started);
    assert_eq!(
        root, "/dev/vda2",
        "the root is the GPT disk's second partition"
    );
    s.power_off("web1", started);
}

/// Copies `len` bytes at `offset` of `from` into a new sparse file `to` (chunks of zeros
/// are skipped): a partition out of a raw disk.
fn extract(from: &Path, offset: u64, len: u64, to: &Path) {
    use std::io::{Seek, SeekFrom};
    let mut input = std::fs::File::open(from).expect("raw disk");
    input.seek(SeekFrom::Start(offset)).expect("seek");
    let mut output = std::fs::File::create(to).expect("partition file");
    let mut chunk = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = chunk.len().min((len - done) as usize);
        input
            .read_exact(&mut chunk[..n])
            .expect("read the raw disk");
        if chunk[..n].iter().any(|b| *b != 0) {
            output.seek(SeekFrom::Start(done)).expect("seek");
            output.write_all(&chunk[..n]).expect("write");
        }
        done += n as u64;
    }
    output.set_len(len).expect("size");
}

/// Formats and layouts: the image as raw, qcow2 v2 (compat 0.10) and v3 (compat 1.1),
/// converted by qemu-img, imports as the very disk the compressed qcow2 is (one digest:
/// the store keeps one raw blob, so every one of these names boots the same bytes); a VM
/// from the v2 name and one from the image's root file system alone (ext4 as the whole
/// disk, a second layout) boot side by side, each to SSH, systemd `running`, the page and
/// a clean poweroff.
#[test]
#[ignore = "13 minutes in the emulated host (three qemu-img conversions and five imports \
            of a 1600 MiB disk, two Debian boots), past the suite's budget: \
            `cargo xtask e2e images::debian::debian_formats -- --ignored --nocapture`"]
fn debian_formats_are_one_image_and_a_bare_file_system_boots() {
    let env = TestEnv::get();
    let s = setup("images-formats");
    let shipped = s.import(test_image(), "debian-12");
    let raw = s.dir.join("debian.raw");
    let qemu_img = |args: &[&str]| {
        let out = run_for(
            Command::new(&env.qemu_img).args(args),
            Duration::from_secs(900),
        );
        assert!(out.status.success(), "qemu-img {args:?}: {}", text(&out));
    };
    let image = test_image().to_str().expect("utf-8 path");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    for (name, options) in [
        ("debian-12-raw", None),
        ("debian-12-v2", Some("compat=0.10")),
        ("debian-12-v3", Some("compat=1.1")),
    ] {
        let file = if options.is_none() {
            raw.clone()
        } else {
            s.dir.join(format!("{name}.qcow2"))
        };
        let mut args = vec!["convert".to_string(), "-O".into()];
        match options {
            None => args.push("raw".into()),
            Some(o) => args.extend(["qcow2".into(), "-o".into(), o.into()]),
        }
        args.extend([image.to_string(), path(&file)]);
        let started = Instant::now();
        qemu_img(&args.iter().map(String::as_str).collect::<Vec<_>>());
        eprintln!(
            "DEBIAN-BOOT: qemu-img convert to {name} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(s.import(&file, name), shipped, "{name} is another disk");
        if file != raw {
            std::fs::remove_file(&file).expect("remove the converted file");
        }
    }
    let info: serde_json::Value = s.daemon.get("/images/debian-12");
    let names = info["names"].as_array().expect("names").len();
    assert_eq!(names, 4, "one image with four names: {info}");

    // The root file system alone: partition 2 (from 2 MiB on) of the raw disk.
    let bare = s.dir.join("debian-root.ext4");
    extract(&raw, 2 << 20, ROOT_MIB << 20, &bare);
    std::fs::remove_file(&raw).expect("remove the raw disk");
    let bare_digest = s.import(&bare, "debian-12-ext4");
    std::fs::remove_file(&bare).expect("remove the file system");
    assert_ne!(bare_digest, shipped);
    let info: serde_json::Value = s.daemon.get("/images/debian-12-ext4");
    assert_eq!(info["layout"], "ext4", "{info}");
    assert_eq!(info["boot"]["root_uuid"], ROOT_UUID, "{info}");

    let started = Instant::now();
    s.create("fmt1", "debian-12-v2", "skimgtap1", "10.0.4.16", "768M");
    s.create("bare1", "debian-12-ext4", "skimgtap2", "10.0.4.17", "768M");
    let root = s.check_guest("fmt1", "10.0.4.16", started);
    assert_eq!(root, "/dev/vda2");
    let root = s.check_guest("bare1", "10.0.4.17", started);
    assert_eq!(root, "/dev/vda", "the root is the whole disk");
    s.power_off("fmt1", started);
    s.power_off("bare1", started);
}
