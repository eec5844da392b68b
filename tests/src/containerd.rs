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
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd for `h` and imports the busybox image.
    pub fn start(h: &Harness) -> Self {
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
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .current_dir(&dir)
            .env("PATH", path)
            .env(husk_hypervisor::artifacts::RUN_ROOT_ENV, h.run_root())
            .env(husk_hypervisor::artifacts::LOG_ROOT_ENV, h.log_root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting containerd (apt-get install containerd; scripts/test.sh does)");
        // Wait for its "booted" line, then keep copying its log to a file.
        let stderr = child.stderr.take().expect("containerd's stderr");
        let (tx, rx) = mpsc::channel();
        let log = dir.join("containerd.log");
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("containerd successfully booted") {
                    let _ = tx.send(());
                }
                if let Some(f) = file.as_mut() {
                    let _ = std::io::Write::write_all(f, format!("{line}\n").as_bytes());
                }
            }
        });
        let cd = Self {
            dir,
            socket,
            run_root: h.run_root(),
            child: Some(child),
        };
        rx.recv_timeout(BOOT_TIMEOUT)
            .unwrap_or_else(|_| panic!("containerd did not start: {}", cd.log_tail()));
        cd.import_busybox(h);
        cd
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

    /// Asserts that no shim of this containerd, no VM and no mount is left.
    pub fn assert_nothing_left(&self) {
        let needle = self.socket.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                !(cmdline.contains("containerd-shim-husk-v2") && cmdline.contains(&needle)),
                "a shim is left: {cmdline}"
            );
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

    /// The socket (for tests that restart containerd).
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}
