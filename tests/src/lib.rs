//! The shared harness of husk's end-to-end tests: real VMs booting husk's own kernel and images
//! through the `auto` back end (QEMU with TCG on hosts without hardware virtualisation).
//!
//! Owns locating the installed artifacts, giving each test private run and log directories,
//! and checking that nothing outlives a VM. Must never fake a VM: when an artifact is missing
//! the test fails and says how to build it (`scripts/test.sh` builds everything first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub mod containerd;
pub mod netns;
pub mod otlp;

use husk_hypervisor::{artifacts, BackendChoice, BootReport, HostPaths, Hypervisor, Vm, VmConfig};

/// Generous for TCG on a loaded 2-core machine; a healthy boot takes ~2 s.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// One test's view of the host.
#[derive(Debug)]
pub struct Harness {
    pub hv: Box<dyn Hypervisor>,
    tmp: tempfile::TempDir,
}

fn require(path: &Path, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} missing at {}: run scripts/test.sh, which builds the kernel and the images first",
        path.display()
    );
    path.to_owned()
}

impl Harness {
    /// A harness on the `auto` back end.
    pub fn new() -> Self {
        Self::with_backend(BackendChoice::Auto)
    }

    /// A harness on the back end `choice` resolves to.
    pub fn with_backend(choice: BackendChoice) -> Self {
        require(&artifacts::kernel(), "guest kernel");
        let hv = husk_hypervisor::for_host(choice, &HostPaths::system())
            .unwrap_or_else(|e| panic!("this host cannot run husk VMs: {e}"));
        let tmp = tempfile::Builder::new()
            .prefix("husk-e2e")
            .tempdir()
            .expect("temp dir");
        Self { hv, tmp }
    }

    pub fn kernel(&self) -> PathBuf {
        require(&artifacts::kernel(), "guest kernel")
    }

    pub fn image(&self, flavour: &str) -> PathBuf {
        require(&artifacts::image(flavour), "guest image")
    }

    /// A scratch directory private to this test.
    pub fn scratch(&self) -> &Path {
        self.tmp.path()
    }

    pub fn run_root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    pub fn log_root(&self) -> PathBuf {
        self.tmp.path().join("log")
    }

    /// A VM configuration for `image` with this test's run and log roots.
    pub fn config(&self, image: &Path) -> VmConfig {
        let mut c = VmConfig::new(self.kernel(), image);
        c.run_root = self.run_root();
        c.log_root = self.log_root();
        c
    }

    /// Boots `config` and waits for husk-init's readiness.
    pub fn boot_ready(&self, config: &VmConfig) -> (Vm, BootReport) {
        let mut vm = self
            .hv
            .boot(config)
            .unwrap_or_else(|e| panic!("boot failed: {e}"));
        let report = vm
            .wait_ready(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("guest not ready: {e}"));
        (vm, report)
    }

    /// Ends the VM (if still running) and checks that nothing it started is left.
    pub fn finish(&self, vm: Vm) {
        let run_dir = vm.run_dir().to_owned();
        let pids = vm.pids();
        drop(vm);
        assert_no_leaks(&run_dir, &pids);
    }

    /// The `husk` CLI, with this test's run and log roots.
    pub fn husk(&self) -> Command {
        let mut c = Command::new(husk_binary());
        c.env(artifacts::RUN_ROOT_ENV, self.run_root())
            .env(artifacts::LOG_ROOT_ENV, self.log_root())
            .env("HUSK_STATE_DIR", self.state_dir());
        c
    }

    /// This test's sandbox state directory (`husk ps`).
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// The workspace's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The `husk` binary built beside this test (scripts/test.sh builds it first).
pub fn husk_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/<profile>/deps/<test> → target/<profile>/husk
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("husk"))
        .unwrap_or_default();
    require(&bin, "the husk binary (cargo build -p husk-ctl)")
}

fn guest_binary(name: &str) -> PathBuf {
    require(
        &target_dir()
            .join("x86_64-unknown-linux-gnu/release")
            .join(name),
        name,
    )
}

/// The statically linked husk-init that images are built from.
pub fn init_binary() -> PathBuf {
    guest_binary("husk-init")
}

/// The statically linked husk-agent that images are built from.
pub fn agent_binary() -> PathBuf {
    guest_binary("husk-agent")
}

/// The statically linked husk-console the guest images carry.
pub fn console_binary() -> PathBuf {
    guest_binary("husk-console")
}

/// The statically linked husk-tracer the guest images carry.
pub fn tracer_binary() -> PathBuf {
    guest_binary("husk-tracer")
}

/// Asserts that a VM left nothing behind: its processes are gone and reaped (no `/proc/<pid>`,
/// which also means their memfd guest memory is freed), no process mentions its run directory,
/// the run directory (sockets) is removed, and this process holds no fd into it.
pub fn assert_no_leaks(run_dir: &Path, pids: &[u32]) {
    for pid in pids {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        assert!(
            !proc_dir.exists(),
            "VM process {pid} still exists (running or unreaped)"
        );
    }
    let needle = run_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&needle),
            "process {:?} still uses {needle}: {cmdline}",
            entry.file_name()
        );
    }
    assert!(
        !run_dir.exists(),
        "run directory {needle} (sockets) left behind"
    );
    for fd in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        assert!(
            !target.contains(&needle),
            "fd {:?} still open on {target}",
            fd.file_name()
        );
    }
}

/// Reads the manifest written beside an image.
pub fn manifest_of(image: &Path) -> husk_protocols::manifest::ImageManifest {
    let path = husk_image::builder::manifest_path_for(image);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("manifest JSON")
}

/// A container root filesystem made of Debian's static busybox, as `husk image busybox` makes it.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    husk_image::container_rootfs::busybox_rootfs(Path::new("/bin/busybox"), dir)
        .expect("busybox rootfs")
}

/// An OCI runtime spec (runc's defaults) running `args` with PATH=/bin, as JSON.
pub fn spec_json(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default()).expect("default spec");
    v["process"]["args"] = serde_json::json!(args);
    v["process"]["env"] = serde_json::json!(["PATH=/bin", "HOME=/"]);
    v["process"]["terminal"] = false.into();
    v["hostname"] = "box".into();
    // runc's default root is read-only; containerd's and docker's are not.
    v["root"]["readonly"] = false.into();
    edit(&mut v);
    v.to_string()
}

/// A single-threaded async runtime for the agent client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
