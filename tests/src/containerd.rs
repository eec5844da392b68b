//! A real containerd (Debian's package) for the shim's end-to-end tests: its own root, state
//! and socket under the test's scratch directory, husk's shim on its PATH, husk's VM run and
//! log roots pointed at the test's, and a busybox image imported with `ctr image import`.
//!
//! Owns starting containerd, waiting for it (on its own "booted" log line, not a sleep), and
//! checking on drop that nothing it started through husk is left: no shim, VM process, mount
//! or VM run directory. Must never touch the host's own containerd.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{busybox_rootfs, husk_binary, Harness};

/// How long containerd may take to start.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for a containerd event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The runtime name of husk's shim.
pub const RUNTIME: &str = "io.containerd.husk.v2";
/// The busybox image every test imports.
pub const IMAGE: &str = "localhost/busybox:latest";

/// A running containerd of one test.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    run_root: PathBuf,
    log_root: PathBuf,
    /// Where the shim records its pods (`husk ps`, `husk exec`).
    state_dir: PathBuf,
    /// husk's configuration file for the shims (`HUSK_CONFIG`), if not the host's.
    husk_config: Option<PathBuf>,
    child: Option<Child>,
}

/// A subscription to containerd's events.
#[derive(Debug)]
pub struct Events {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Events {
    /// Waits for an event line that `matches` (up to [`EVENT_TIMEOUT`]); returns it.
    pub fn wait_for(&mut self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("no matching containerd event within {EVENT_TIMEOUT:?}"),
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    /// Starts containerd for `h` and imports the busybox image.
    pub fn start(h: &Harness) -> Self {
        Self::start_with(h, None)
    }

    /// As [`Self::start`], its shims reading husk's configuration from `husk_config`.
    pub fn start_with(h: &Harness, husk_config: Option<&Path>) -> Self {
        let dir = h.scratch().join("cd");
        std::fs::create_dir_all(&dir).expect("containerd directory");
        let socket = dir.join("c.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"info\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let mut cd = Self {
            dir,
            socket,
            run_root: h.run_root(),
            log_root: h.log_root(),
            state_dir: h.state_dir(),
            husk_config: husk_config.map(Path::to_owned),
            child: None,
        };
        cd.spawn();
        cd.import_busybox(h);
        cd
    }

    /// Starts the daemon and waits for its "booted" line; its log goes to containerd.log.
    fn spawn(&mut self) {
        // The shim is found on containerd's PATH, next to the husk binary.
        let bin_dir = husk_binary()
            .parent()
            .expect("the husk binary's directory")
            .to_owned();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("containerd");
        if let Some(c) = &self.husk_config {
            cmd.env(husk_config::CONFIG_ENV, c);
        }
        let mut child = cmd
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .current_dir(&self.dir)
            .env("PATH", path)
            .env(husk_hypervisor::artifacts::RUN_ROOT_ENV, &self.run_root)
            .env(husk_hypervisor::artifacts::LOG_ROOT_ENV, &self.log_root)
            .env("HUSK_STATE_DIR", &self.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting containerd (apt-get install containerd; scripts/test.sh does)");
        let stderr = child.stderr.take().expect("containerd's stderr");
        let (tx, rx) = mpsc::channel();
        let log = self.dir.join("containerd.log");
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("containerd successfully booted") {
                    let _ = tx.send(());
                }
                if let Some(f) = file.as_mut() {
                    let _ = std::io::Write::write_all(f, format!("{line}\n").as_bytes());
                }
            }
        });
        self.child = Some(child);
        rx.recv_timeout(BOOT_TIMEOUT)
            .unwrap_or_else(|_| panic!("containerd did not start: {}", self.log_tail()));
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Stops containerd (its shims keep running) and starts it again on the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Subscribes to containerd's events (`ctr events`), from now on.
    pub fn events(&self) -> Events {
        let mut child = self
            .ctr()
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().expect("ctr events' stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let events = Events { child, lines: rx };
        // `ctr events` subscribes some time after it starts: make an event of our own and wait
        // for it, so that no later event can be missed.
        static MARK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let mark = format!(
            "husk-sync-{}",
            MARK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        loop {
            self.ok(&["namespaces", "create", &mark]);
            let seen = events.lines.recv_timeout(Duration::from_secs(1));
            self.ok(&["namespaces", "remove", &mark]);
            match seen {
                Ok(line) if line.contains(&mark) => break,
                _ => continue,
            }
        }
        events
    }

    /// The last lines of containerd's log (shim logs go there too).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `ctr` talking to this containerd.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket);
        c
    }

    /// Runs `ctr ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.ctr().args(args).output().expect("running ctr")
    }

    /// Runs `ctr ARGS`, asserts that it succeeded (showing containerd's log if not) and returns
    /// its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn import_busybox(&self, h: &Harness) {
        let rootfs = busybox_rootfs(&h.scratch().join("busybox"));
        let layout = h.scratch().join("busybox-oci");
        let config = husk_oci::RunConfig {
            cmd: Some(vec!["sh".into()]),
            env: Some(vec!["PATH=/bin".into()]),
            ..Default::default()
        };
        husk_oci::write_layout(&rootfs, &config, &layout).expect("busybox OCI layout");
        let tar = h.scratch().join("busybox-oci.tar");
        let status = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&layout)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success());
        let out = self
            .ctr()
            .args(["images", "import", "--base-name", "localhost/busybox"])
            .arg(&tar)
            .output()
            .expect("ctr images import");
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Asserts that no shim of this containerd, no VM, no mount and no shim socket of the
    /// containers `ids` is left.
    pub fn assert_nothing_left(&self, ids: &[&str]) {
        use sha2::Digest;
        for id in ids {
            let key = self.socket.join("default").join(id);
            let hash = sha2::Sha256::digest(key.to_string_lossy().as_bytes());
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            let sock = Path::new("/run/containerd/s").join(hex);
            assert!(
                !sock.exists(),
                "the shim socket of {id} is left: {}",
                sock.display()
            );
        }
        if let Some((_, cmdline)) = self.shims().first() {
            panic!("a shim is left: {cmdline}");
        }
        let vms: Vec<_> = std::fs::read_dir(&self.run_root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(vms.is_empty(), "VM run directories left: {vms:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.join("state").to_string_lossy().into_owned();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(left.is_empty(), "mounts left: {left:#?}");
    }

    /// The running husk shims of this containerd: pid and command line.
    pub fn shims(&self) -> Vec<(u32, String)> {
        let needle = self.socket.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                (cmdline.contains("containerd-shim-husk-v2") && cmdline.contains(&needle))
                    .then_some((pid, cmdline))
            })
            .collect()
    }

    /// The socket (for tests that restart containerd).
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Containerd {
    /// Stops containerd; after a failed test, also what it left: its shims (their VMs die with
    /// them) and the mounts under its directories, so one failure does not leak into the host.
    fn drop(&mut self) {
        self.stop();
        for (pid, _) in self.shims() {
            // SAFETY: kill(2) on a shim this test's containerd started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let dir = self.dir.to_string_lossy().into_owned();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
    }
}
