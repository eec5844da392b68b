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
    /// Adds busybox, its applet links, a shell on the serial console and the debugging tools
    /// it is given (dynamically linked ones with their loader and libraries).
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
    /// Statically linked husk-tracer (the guest's spans to the host), started where tracing is
    /// enabled.
    pub tracer: PathBuf,
    /// Statically linked busybox (debug flavour only).
    pub busybox: PathBuf,
    /// Extra programs for the debug flavour (`strace`, `lsof`), placed at `/usr/bin/<name>`
    /// with their loader and shared libraries ([`crate::dynlib`]); the default flavour
    /// refuses any.
    pub tools: Vec<PathBuf>,
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
    #[error("{what} is missing: there is no {path}; {fix}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        fix: &'static str,
    },
    #[error("cannot read {what} at {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} at {path} cannot run in the guest: {error}; {fix}")]
    Unusable {
        what: &'static str,
        path: PathBuf,
        error: ElfError,
        fix: &'static str,
    },
    #[error("cannot run {path} to ask its version: {detail}")]
    Version { path: PathBuf, detail: String },
    #[error("tool {path} cannot go into the image: {error}")]
    Tool {
        path: PathBuf,
        error: crate::dynlib::DynlibError,
    },
    #[error("tool {path}: {detail}")]
    ToolName { path: PathBuf, detail: String },
    #[error(
        "tools ({0}) go only into the debug flavour; build it with --debug, or leave them out"
    )]
    ToolsNeedDebug(String),
    #[error("invalid service: {0}")]
    Service(String),
    #[error("cannot build the SELinux policy: {0}")]
    Selinux(#[from] PolicyError),
    #[error("cannot write the image to {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
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
/// Where the trace forwarder lives in the image.
pub const TRACER_PATH: &str = "/usr/bin/husk-tracer";
pub use husk_protocols::manifest::TRACER_SERVICE;
const TRACER_FIX: &str = "build it with `cargo build --release -p husk-tracer --target x86_64-unknown-linux-gnu` and RUSTFLAGS='-C target-feature=+crt-static'";
const BUSYBOX_FIX: &str =
    "install Debian's busybox-static package (`apt-get install busybox-static`)";

fn read_static(what: &'static str, path: &Path, fix: &'static str) -> Result<Vec<u8>, ImageError> {
    let data = std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => ImageError::Missing {
            what,
            path: path.into(),
            fix,
        },
        _ => ImageError::Read {
            what,
            path: path.into(),
            error,
        },
    })?;
    check_static_x86_64(&data).map_err(|error| ImageError::Unusable {
        what,
        path: path.into(),
        error,
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

/// A debug tool's version: its Debian package's version (`dpkg-query`), with the package's name
/// where it differs from the tool's; for a file no package owns, `sha256:` and a prefix of its
/// content hash. Never the tool's own output, whose format differs from tool to tool.
fn tool_version(path: &Path, name: &str, data: &[u8]) -> String {
    let owner = |p: &Path| -> Option<String> {
        let out = Command::new("dpkg-query").arg("-S").arg(p).output().ok()?;
        if !out.status.success() {
            return None;
        }
        // `strace: /usr/bin/strace`, or `libc6:amd64, libc6:i386: /path`.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| !l.starts_with("diversion by"))?;
        let (pkgs, _) = line.split_once(": ")?;
        pkgs.split(", ").next().map(str::to_owned)
    };
    // dpkg knows a file by the path its package ships, which merged /usr may hide: try the
    // path, the real file, and the real file without or with the /usr prefix.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let alias = match real.strip_prefix("/usr") {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => Path::new("/usr").join(real.strip_prefix("/").unwrap_or(&real)),
    };
    let package = [path, real.as_path(), alias.as_path()]
        .into_iter()
        .find_map(owner);
    let version = package.as_ref().and_then(|pkg| {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", pkg])
            .output()
            .ok()?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !v.is_empty()).then_some(v)
    });
    match (package, version) {
        (Some(pkg), Some(v)) => {
            let bare = pkg.split(':').next().unwrap_or(&pkg);
            if bare == name {
                v
            } else {
                format!("{v} ({bare})")
            }
        }
        _ => format!("sha256:{}", &hex(&sha2::Sha256::digest(data))[..16]),
    }
}

/// Adds each tool at `/usr/bin/<name>` with its loader and shared libraries, each at the path
/// the loader will look for it (regular files: the image's `/lib` is a real directory).
fn add_tools(
    t: &mut Tree,
    tools: &[PathBuf],
    components: &mut BTreeMap<String, String>,
) -> Result<(), ImageError> {
    let resolver = crate::dynlib::Resolver::default();
    for path in tools {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .ok_or_else(|| ImageError::ToolName {
                path: path.clone(),
                detail: "has no usable file name".into(),
            })?;
        if components.contains_key(name) || name.starts_with("husk-") {
            return Err(ImageError::ToolName {
                path: path.clone(),
                detail: format!(
                    "{name} is already in the image (given twice, or one of husk's own)"
                ),
            });
        }
        let data = std::fs::read(path).map_err(|error| ImageError::Read {
            what: "tool",
            path: path.clone(),
            error,
        })?;
        let closure = resolver
            .closure(path, &data)
            .map_err(|error| ImageError::Tool {
                path: path.clone(),
                error,
            })?;
        for obj in closure.objects() {
            t.file(&obj.image_path, 0o755, obj.data.clone());
        }
        components.insert(name.to_owned(), tool_version(path, name, &data));
        // After busybox: a tool replaces an applet link of the same name.
        t.file(&format!("usr/bin/{name}"), 0o755, data);
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

/// husk-tracer, in every flavour only when the host turns tracing on (`husk.tracing=1`).
/// First in the start order, so that it listens before the other services send spans
/// (husk-init stops it last).
fn tracer_service() -> ServiceSpec {
    ServiceSpec {
        name: TRACER_SERVICE.into(),
        argv: vec![TRACER_PATH.into()],
        env: vec!["PATH=/usr/bin:/bin:/usr/sbin:/sbin".into()],
        stdio: ServiceStdio::Log,
        enabled_by: Some(husk_protocols::cmdline::TRACING.into()),
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

pub use husk_protocols::manifest::manifest_path_for;

/// Builds the image described by `spec`.
pub fn build(spec: &ImageSpec) -> Result<BuildReport, ImageError> {
    if spec.flavour != Flavour::Debug && !spec.tools.is_empty() {
        let names: Vec<String> = spec.tools.iter().map(|p| p.display().to_string()).collect();
        return Err(ImageError::ToolsNeedDebug(names.join(", ")));
    }
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
    let tracer = read_static("husk-tracer", &spec.tracer, TRACER_FIX)?;
    components.insert(
        "husk-tracer".into(),
        component_version(&spec.tracer, "husk-tracer")?,
    );
    tree.file(TRACER_PATH, 0o755, tracer);
    // How the agent confines containers with seccomp (`husk check` shows it).
    if let Ok(line) = first_line(&spec.agent, &["--seccomp"]) {
        components.insert("seccomp".into(), line);
    }
    let selinux = add_selinux(&mut tree)?;

    // The tracer first, where it runs, so that it listens before anything sends spans; then
    // the agent: it is what the host waits for.
    let mut services = vec![
        tracer_service(),
        agent_service(),
        console_service(spec.flavour),
    ];
    if spec.flavour == Flavour::Debug {
        add_busybox(&mut tree, &spec.busybox, &mut components)?;
        add_tools(&mut tree, &spec.tools, &mut components)?;
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
        move |error| ImageError::Write { path, error }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A static x86-64 program that prints `line` and exits 0, whatever its arguments: a
    /// stand-in for husk-init, husk-agent, husk-console and husk-tracer, which answer
    /// `--version`.
    fn fake_program(line: &str) -> Vec<u8> {
        let msg = format!("{line}\n");
        let mut code = vec![0xb8, 1, 0, 0, 0, 0xbf, 1, 0, 0, 0]; // mov eax, 1; mov edi, 1
        code.extend([0x48, 0x8d, 0x35, 16, 0, 0, 0]); // lea rsi, [rip + 16] (the message)
        code.push(0xba); // mov edx, len
        code.extend((msg.len() as u32).to_le_bytes());
        code.extend([0x0f, 0x05, 0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]); // write; exit(0)
        assert_eq!(code.len(), 33);
        let base = 0x40_0000u64;
        let total = (120 + code.len() + msg.len()) as u64;
        let mut b = vec![0u8; 64];
        b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&(base + 120).to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R X
        ph[16..24].copy_from_slice(&base.to_le_bytes());
        ph[24..32].copy_from_slice(&base.to_le_bytes());
        ph[32..40].copy_from_slice(&total.to_le_bytes());
        ph[40..48].copy_from_slice(&total.to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        b.extend(ph);
        b.extend(code);
        b.extend(msg.as_bytes());
        b
    }

    /// Entries of a newc archive: path → (mode, contents).
    fn unpack(cpio: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut at = 0;
        let field = |at: usize, i: usize| {
            let s = std::str::from_utf8(&cpio[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
            u32::from_str_radix(s, 16).unwrap() as usize
        };
        loop {
            assert_eq!(&cpio[at..at + 6], b"070701");
            let (mode, size, namesize) = (field(at, 1), field(at, 6), field(at, 11));
            let name = std::str::from_utf8(&cpio[at + 110..at + 110 + namesize - 1])
                .unwrap()
                .to_owned();
            let data_at = (at + 110 + namesize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                return out;
            }
            out.insert(name, (mode as u32, cpio[data_at..data_at + size].to_vec()));
            at = (data_at + size).next_multiple_of(4);
        }
    }

    struct Inputs {
        dir: tempfile::TempDir,
    }

    impl Inputs {
        fn new() -> Self {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            for name in ["husk-init", "husk-agent", "husk-console", "husk-tracer"] {
                let path = dir.path().join(name);
                std::fs::write(&path, fake_program(&format!("{name} 0.0.0-test"))).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            Self { dir }
        }

        fn spec(&self, flavour: Flavour, tools: &[&str], output: &str) -> ImageSpec {
            let p = |n: &str| self.dir.path().join(n);
            ImageSpec {
                flavour,
                init: p("husk-init"),
                agent: p("husk-agent"),
                console: p("husk-console"),
                tracer: p("husk-tracer"),
                busybox: "/bin/busybox".into(),
                tools: tools.iter().map(PathBuf::from).collect(),
                services: vec![],
                output: p(output),
            }
        }
    }

    /// Builds, retrying while a just-written fake program is briefly busy (ETXTBSY: another
    /// test thread forked while it was open for writing).
    fn build_ok(spec: &ImageSpec) -> BuildReport {
        for _ in 0..20 {
            match build(spec) {
                Err(ImageError::Version { detail, .. }) if detail.contains("busy") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => return r.unwrap(),
            }
        }
        panic!("fake programs stayed busy")
    }

    #[test]
    fn the_debug_image_carries_tools_with_their_libraries() {
        let inputs = Inputs::new();
        let plain = build_ok(&inputs.spec(Flavour::Debug, &[], "plain.cpio"));
        let spec = inputs.spec(
            Flavour::Debug,
            &["/usr/bin/strace", "/usr/bin/lsof"],
            "debug.cpio",
        );
        let r = build_ok(&spec);
        eprintln!(
            "debug image: {} bytes without tools, {} with strace and lsof",
            plain.bytes, r.bytes
        );
        let entries = unpack(&std::fs::read(&r.output).unwrap());
        let regular = |p: &str| {
            let (mode, data) = entries.get(p).unwrap_or_else(|| panic!("{p} missing"));
            assert_eq!(mode & 0o170000, 0o100000, "{p} is a regular file");
            assert!(data.starts_with(b"\x7fELF"), "{p} is an ELF file");
            data.clone()
        };
        assert_eq!(
            regular("usr/bin/strace"),
            std::fs::read("/usr/bin/strace").unwrap()
        );
        regular("usr/bin/lsof");
        regular("lib64/ld-linux-x86-64.so.2");
        regular("lib/x86_64-linux-gnu/libc.so.6");
        regular("lib/x86_64-linux-gnu/libselinux.so.1"); // lsof's
        for dir in ["lib", "lib64", "lib/x86_64-linux-gnu"] {
            assert_eq!(entries[dir].0 & 0o170000, 0o040000, "{dir} is a directory");
        }
        let c = &r.manifest.components;
        assert!(c.get("strace").is_some_and(|v| !v.is_empty()), "{c:?}");
        assert!(c.get("lsof").is_some_and(|v| !v.is_empty()), "{c:?}");
        assert_eq!(c["husk-init"], "0.0.0-test");
        assert_eq!(
            tool_version(Path::new("/usr/bin/strace"), "strace", b""),
            c["strace"]
        );

        // Identical inputs, identical image.
        let again = build_ok(&inputs.spec(
            Flavour::Debug,
            &["/usr/bin/strace", "/usr/bin/lsof"],
            "again.cpio",
        ));
        assert_eq!(again.manifest.build_id, r.manifest.build_id);
        assert_eq!(
            std::fs::read(&again.output).unwrap(),
            std::fs::read(&r.output).unwrap()
        );
        assert_ne!(plain.manifest.build_id, r.manifest.build_id);
    }

    #[test]
    fn tool_versions_come_from_their_packages() {
        // Debian 12 ships ss as /bin/ss (iproute2); merged /usr makes it /usr/bin/ss too.
        if Path::new("/usr/bin/ss").exists() {
            let v = tool_version(Path::new("/usr/bin/ss"), "ss", b"");
            assert!(v.ends_with(" (iproute2)"), "{v}");
        }
        let v = tool_version(Path::new("/nonexistent/tool"), "tool", b"abc");
        assert_eq!(v, "sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn every_flavour_carries_the_tracer_started_first_when_tracing_is_on() {
        let inputs = Inputs::new();
        for flavour in [Flavour::Default, Flavour::Debug] {
            let r = build_ok(&inputs.spec(flavour, &[], &format!("{}.cpio", flavour.name())));
            let entries = unpack(&std::fs::read(&r.output).unwrap());
            let (mode, data) = &entries["usr/bin/husk-tracer"];
            assert_eq!(mode & 0o777, 0o755);
            assert_eq!(
                data,
                &std::fs::read(inputs.dir.path().join("husk-tracer")).unwrap()
            );
            assert_eq!(r.manifest.components["husk-tracer"], "0.0.0-test");
            let names: Vec<&str> = r
                .manifest
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(
                names[..3],
                [TRACER_SERVICE, "agent", CONSOLE_SERVICE],
                "{names:?}"
            );
            let tracer = &r.manifest.services[0];
            assert_eq!(tracer.argv, [TRACER_PATH]);
            assert_eq!(
                tracer.enabled_by.as_deref(),
                Some(husk_protocols::cmdline::TRACING)
            );
            assert!(!tracer.enabled(""), "off unless the host turns tracing on");
            assert!(tracer.enabled("console=ttyS0 husk.tracing=1"));
        }
    }

    #[test]
    fn a_missing_tracer_is_an_error_naming_the_fix() {
        let inputs = Inputs::new();
        let mut spec = inputs.spec(Flavour::Default, &[], "t.cpio");
        spec.tracer = inputs.dir.path().join("absent-tracer");
        let err = build(&spec).unwrap_err().to_string();
        assert!(
            err.contains("husk-tracer is missing")
                && err.contains("absent-tracer")
                && err.contains("cargo build --release -p husk-tracer"),
            "{err}"
        );
        // Present but not a static x86-64 program: the fix says how to build it.
        std::fs::write(&spec.tracer, b"#!/bin/sh\n").unwrap();
        let err = build(&spec).unwrap_err().to_string();
        assert!(err.contains("-p husk-tracer"), "{err}");
    }

    #[test]
    fn tools_are_refused_outside_the_debug_flavour_and_checked() {
        let inputs = Inputs::new();
        let err = build(&inputs.spec(Flavour::Default, &["/usr/bin/strace"], "d.cpio"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("debug") && err.contains("/usr/bin/strace"),
            "{err}"
        );
        let err = build(&inputs.spec(Flavour::Debug, &["/nonexistent/tool"], "d.cpio"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tool"), "{err}");
        let twice = ["/usr/bin/strace", "/usr/bin/strace"];
        let err = build(&inputs.spec(Flavour::Debug, &twice, "d.cpio"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already in the image"), "{err}");
    }
}
