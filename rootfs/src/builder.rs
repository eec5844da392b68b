//! Assembles a guest image from its inputs: the skeleton, husk-init as `/init`, the flavour's
//! extras, the manifest; then writes the archive atomically with its manifest beside it.
//!
//! Owns what goes into each flavour. Must never embed anything that varies between runs of the
//! same inputs (times, host names, absolute host paths), so the build id is a content hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_protocols::manifest::{
    ImageManifest, SelinuxPolicy, ServiceSpec, ServiceStdio, MANIFEST_PATH, SCHEMA,
    SELINUX_CONFIG_PATH, SELINUX_POLICY_PATH, SELINUX_POLICY_VERSION,
};
use sha2::Digest;

use crate::elf::{check_static_x86_64, ElfError};
use crate::selinux::PolicyError;
use crate::tree::Tree;

/// Image flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// husk-init and the services it runs; nothing else.
    Default,
    /// Adds busybox, its applet links and a shell on the serial console.
    Debug,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Default => "default",
            Flavour::Debug => "debug",
        }
    }
}

/// Inputs of one image build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub flavour: Flavour,
    /// Statically linked husk-init.
    pub init: PathBuf,
    /// Statically linked husk-agent.
    pub agent: PathBuf,
    /// Statically linked husk-console (`husk exec`), started where the console is enabled.
    pub console: PathBuf,
    /// Statically linked busybox (debug flavour only).
    pub busybox: PathBuf,
    /// Extra services, started after the flavour's own.
    pub services: Vec<ServiceSpec>,
    /// Where to write the archive.
    pub output: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub output: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: ImageManifest,
    pub bytes: u64,
    pub entries: usize,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {what} at {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} at {path} cannot run in the guest: {source}; {fix}")]
    Unusable {
        what: &'static str,
        path: PathBuf,
        source: ElfError,
        fix: &'static str,
    },
    #[error("cannot run {path} to ask its version: {detail}")]
    Version { path: PathBuf, detail: String },
    #[error("invalid service: {0}")]
    Service(String),
    #[error("cannot build the SELinux policy: {0}")]
    Selinux(#[from] PolicyError),
    #[error("cannot write the image to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

const INIT_FIX: &str = "build it with `cargo build --release -p husk-init --target x86_64-unknown-linux-gnu` and RUSTFLAGS='-C target-feature=+crt-static'";
const AGENT_FIX: &str = "build it with `cargo build --release -p husk-agent --target x86_64-unknown-linux-gnu` and RUSTFLAGS='-C target-feature=+crt-static'";

/// Where the agent lives in the image.
pub const AGENT_PATH: &str = "/usr/bin/husk-agent";
/// Where the console server lives in the image.
pub const CONSOLE_PATH: &str = "/usr/bin/husk-console";
pub use husk_protocols::manifest::CONSOLE_SERVICE;
const CONSOLE_FIX: &str = "build it with `cargo build --release -p husk-console --target x86_64-unknown-linux-gnu` and RUSTFLAGS='-C target-feature=+crt-static'";
const BUSYBOX_FIX: &str =
    "install Debian's busybox-static package (`apt-get install busybox-static`)";

fn read_static(what: &'static str, path: &Path, fix: &'static str) -> Result<Vec<u8>, ImageError> {
    let data = std::fs::read(path).map_err(|source| ImageError::Read {
        what,
        path: path.into(),
        source,
    })?;
    check_static_x86_64(&data).map_err(|source| ImageError::Unusable {
        what,
        path: path.into(),
        source,
        fix,
    })?;
    Ok(data)
}

/// First line a program prints for `args`, e.g. its version banner.
fn first_line(path: &Path, args: &[&str]) -> Result<String, ImageError> {
    let out = Command::new(path)
        .args(args)
        .output()
        .map_err(|e| ImageError::Version {
            path: path.into(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ImageError::Version {
            path: path.into(),
            detail: format!("no output ({})", out.status),
        })
}

fn skeleton(t: &mut Tree) {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc/husk", "proc", "sys", "dev", "run", "var",
        "mnt", "root",
    ] {
        t.dir(d, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.dir("root", 0o700);
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    t.char_dev("dev/console", 0o600, 5, 1);
    t.char_dev("dev/null", 0o666, 1, 3);
}

fn add_busybox(
    t: &mut Tree,
    busybox: &Path,
    components: &mut BTreeMap<String, String>,
) -> Result<(), ImageError> {
    let data = read_static("busybox", busybox, BUSYBOX_FIX)?;
    let banner = first_line(busybox, &[])?;
    components.insert(
        "busybox".into(),
        banner
            .split_whitespace()
            .nth(1)
            .unwrap_or(&banner)
            .to_owned(),
    );
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| ImageError::Version {
            path: busybox.into(),
            detail: e.to_string(),
        })?;
    t.file("bin/busybox", 0o755, data);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        // Only plain relative paths such as `usr/bin/awk`; never anything that climbs out.
        if applet.is_empty()
            || applet == "bin/busybox"
            || applet.split('/').any(|p| p == ".." || p.is_empty())
        {
            continue;
        }
        t.symlink(applet, "/bin/busybox");
    }
    Ok(())
}

/// The version a husk binary prints for `--version` (`husk-init 0.1.0` → `0.1.0`).
fn component_version(path: &Path, name: &str) -> Result<String, ImageError> {
    let line = first_line(path, &["--version"])?;
    Ok(line
        .strip_prefix(name)
        .map(str::trim)
        .unwrap_or(&line)
        .to_owned())
}

fn agent_service() -> ServiceSpec {
    ServiceSpec {
        name: "agent".into(),
        argv: vec![AGENT_PATH.into()],
        env: vec!["PATH=/usr/bin:/bin:/usr/sbin:/sbin".into()],
        stdio: ServiceStdio::Log,
        enabled_by: None,
    }
}

/// husk-console. In the default flavour it runs only when the host enables it
/// (`husk.console=1`); the debug flavour always runs it.
fn console_service(flavour: Flavour) -> ServiceSpec {
    ServiceSpec {
        name: CONSOLE_SERVICE.into(),
        argv: vec![CONSOLE_PATH.into()],
        env: vec!["PATH=/usr/bin:/bin:/usr/sbin:/sbin".into()],
        stdio: ServiceStdio::Log,
        enabled_by: match flavour {
            Flavour::Default => Some(husk_protocols::cmdline::CONSOLE.into()),
            Flavour::Debug => None,
        },
    }
}

fn debug_shell() -> ServiceSpec {
    ServiceSpec {
        name: "console-shell".into(),
        argv: vec!["/bin/sh".into()],
        env: vec![
            "PATH=/bin:/sbin:/usr/bin:/usr/sbin".into(),
            "HOME=/root".into(),
            "TERM=linux".into(),
            "PS1=husk# ".into(),
        ],
        stdio: ServiceStdio::Console,
        enabled_by: None,
    }
}

/// Adds the compiled SELinux policy and libselinux's configuration; what the manifest says
/// about the policy.
fn add_selinux(t: &mut Tree) -> Result<SelinuxPolicy, ImageError> {
    let policy = crate::selinux::compile(Path::new(crate::selinux::SECILC))?;
    let sha256 = hex(&sha2::Sha256::digest(&policy));
    t.file(SELINUX_POLICY_PATH, 0o644, policy);
    t.file(
        SELINUX_CONFIG_PATH,
        0o644,
        crate::selinux::CONFIG.as_bytes().to_vec(),
    );
    Ok(SelinuxPolicy {
        path: SELINUX_POLICY_PATH.into(),
        version: SELINUX_POLICY_VERSION,
        sha256,
    })
}

/// Path of the manifest written beside an image.
pub fn manifest_path_for(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".manifest.json");
    s.into()
}

/// Builds the image described by `spec`.
pub fn build(spec: &ImageSpec) -> Result<BuildReport, ImageError> {
    let mut tree = Tree::default();
    skeleton(&mut tree);
    let mut components = BTreeMap::new();

    let init = read_static("husk-init", &spec.init, INIT_FIX)?;
    components.insert(
        "husk-init".into(),
        component_version(&spec.init, "husk-init")?,
    );
    tree.file("init", 0o755, init);
    let agent = read_static("husk-agent", &spec.agent, AGENT_FIX)?;
    components.insert(
        "husk-agent".into(),
        component_version(&spec.agent, "husk-agent")?,
    );
    tree.file(AGENT_PATH, 0o755, agent);
    let console = read_static("husk-console", &spec.console, CONSOLE_FIX)?;
    components.insert(
        "husk-console".into(),
        component_version(&spec.console, "husk-console")?,
    );
    tree.file(CONSOLE_PATH, 0o755, console);
    // How the agent confines containers with seccomp (`husk check` shows it).
    if let Ok(line) = first_line(&spec.agent, &["--seccomp"]) {
        components.insert("seccomp".into(), line);
    }
    let selinux = add_selinux(&mut tree)?;

    // The agent first: it is what the host waits for.
    let mut services = vec![agent_service(), console_service(spec.flavour)];
    if spec.flavour == Flavour::Debug {
        add_busybox(&mut tree, &spec.busybox, &mut components)?;
        services.push(debug_shell());
    }
    services.extend(spec.services.iter().cloned());
    for s in &services {
        s.validate().map_err(ImageError::Service)?;
    }

    let mut manifest = ImageManifest {
        schema: SCHEMA,
        build_id: String::new(),
        flavour: spec.flavour.name().into(),
        components,
        services,
        selinux: Some(selinux),
    };
    let mut h = tree.digest();
    h.update(serde_json::to_vec(&manifest).unwrap_or_default());
    manifest.build_id = hex(&h.finalize()[..16]);
    let manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    tree.file(MANIFEST_PATH, 0o644, manifest_json.clone());

    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Write { path, source }
    };
    if let Some(dir) = spec.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    let bytes = tree
        .write_cpio(Vec::new())
        .map_err(write_err(&spec.output))?;
    let manifest_path = manifest_path_for(&spec.output);
    atomic_write(&spec.output, &bytes).map_err(write_err(&spec.output))?;
    atomic_write(&manifest_path, &manifest_json).map_err(write_err(&manifest_path))?;
    Ok(BuildReport {
        output: spec.output.clone(),
        manifest_path,
        manifest,
        bytes: bytes.len() as u64,
        entries: tree.len(),
    })
}

/// Writes through a temporary file and a rename, so a reader never sees half an image.
fn atomic_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
