//! `husk image`: `build` makes a guest image with [`husk_image`] and says what it made; `list`
//! and `show` present the guest images in `$HUSK_HOME/images` and their manifests; `busybox`
//! makes a container image.
//!
//! Owns the commands' flags and defaults (the debug flavour's default tools among them) and
//! their presentation. Must never build binaries itself: it takes the binaries it is given;
//! `list` and `show` only read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use husk_hypervisor::artifacts;
use husk_image::{Flavour, ImageSpec};
use husk_protocols::manifest::{ImageManifest, ServiceSpec, ServiceStdio};

/// The debug flavour's tools unless `--no-default-tools`: (host path, Debian package).
pub const DEFAULT_TOOLS: &[(&str, &str)] =
    &[("/usr/bin/strace", "strace"), ("/usr/bin/lsof", "lsof")];

/// Flags of `husk image build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Build the debug flavour (adds busybox, a shell on the serial console, strace and lsof).
    #[arg(long)]
    debug: bool,
    /// An extra program for the debug flavour, put at /usr/bin/<name> with its shared libraries
    /// (repeatable; after the defaults, /usr/bin/strace and /usr/bin/lsof).
    #[arg(long = "tool", value_name = "PATH")]
    tools: Vec<PathBuf>,
    /// Leave out the debug flavour's default tools (strace, lsof).
    #[arg(long)]
    no_default_tools: bool,
    /// Statically linked husk-init.
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/husk-init"
    )]
    init: PathBuf,
    /// Statically linked husk-agent.
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/husk-agent"
    )]
    agent: PathBuf,
    /// Statically linked husk-console.
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/husk-console"
    )]
    console: PathBuf,
    /// Statically linked husk-tracer.
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/husk-tracer"
    )]
    tracer: PathBuf,
    /// Statically linked busybox for the debug flavour.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Output file (default: $HUSK_HOME/images/<flavour>.cpio).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// An extra service for husk-init to supervise: NAME=/abs/program [args…] (space-separated).
    #[arg(long = "service", value_name = "NAME=COMMAND")]
    services: Vec<String>,
}

fn parse_service(s: &str) -> anyhow::Result<ServiceSpec> {
    let (name, cmd) = s
        .split_once('=')
        .with_context(|| format!("--service {s:?}: expected NAME=/abs/program [args…]"))?;
    let spec = ServiceSpec {
        name: name.into(),
        argv: cmd.split_whitespace().map(str::to_owned).collect(),
        env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()],
        stdio: ServiceStdio::Log,
        enabled_by: None,
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    Ok(spec)
}

/// The debug flavour's tools: the defaults that apply, then `--tool`s, each once. A default
/// that is missing here is an error naming its Debian package.
fn tools(args: &BuildArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut tools: Vec<PathBuf> = Vec::new();
    if args.debug && !args.no_default_tools {
        for (path, package) in DEFAULT_TOOLS {
            anyhow::ensure!(
                Path::new(path).exists(),
                "{path} is missing: the debug image carries it; install Debian's {package} \
                 package (`apt-get install {package}`), or pass --no-default-tools"
            );
            tools.push(path.into());
        }
    }
    for t in &args.tools {
        if !tools.contains(t) {
            tools.push(t.clone());
        }
    }
    Ok(tools)
}

pub fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let flavour = if args.debug {
        Flavour::Debug
    } else {
        Flavour::Default
    };
    let spec = ImageSpec {
        tools: tools(args)?,
        flavour,
        init: args.init.clone(),
        agent: args.agent.clone(),
        console: args.console.clone(),
        tracer: args.tracer.clone(),
        busybox: args.busybox.clone(),
        services: args
            .services
            .iter()
            .map(|s| parse_service(s))
            .collect::<anyhow::Result<_>>()?,
        output: args
            .output
            .clone()
            .unwrap_or_else(|| artifacts::image(flavour.name())),
    };
    eprintln!(
        "[image] building the {} image from {}",
        flavour.name(),
        spec.init.display()
    );
    let r = husk_image::build(&spec)?;
    let components: Vec<String> = r
        .manifest
        .components
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "{} image: {} ({} entries, {:.1} MiB)\n  build id   {}\n  contains   {}\n  manifest   {}",
        flavour.name(),
        r.output.display(),
        r.entries,
        r.bytes as f64 / 1048576.0,
        r.manifest.build_id,
        components.join(", "),
        r.manifest_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Flags of `husk image busybox`.
#[derive(Debug, Clone, clap::Args)]
pub struct BusyboxArgs {
    /// Statically linked busybox.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Output directory (default: $HUSK_HOME/containers/busybox).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Also write it as a one-layer OCI image layout at this directory (cmd: sh).
    #[arg(long, value_name = "DIR")]
    oci: Option<PathBuf>,
}

pub fn busybox(args: &BusyboxArgs) -> anyhow::Result<ExitCode> {
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| artifacts::container_image("busybox"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let dir = husk_image::container_rootfs::busybox_rootfs(&args.busybox, &out)?;
    println!(
        "busybox root filesystem: {} (run it: husk run {} -- sh -c 'echo hi')",
        dir.display(),
        dir.display()
    );
    if let Some(layout) = &args.oci {
        let config = husk_oci::RunConfig {
            cmd: Some(vec!["sh".into()]),
            env: Some(vec!["PATH=/bin".into(), "HOME=/root".into()]),
            working_dir: Some("/".into()),
            ..Default::default()
        };
        let _ = std::fs::remove_dir_all(layout);
        husk_oci::write_layout(&dir, &config, layout)?;
        println!("busybox OCI image layout: {}", layout.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `husk image list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Machine-readable output: [{name, path, bytes, manifest}].
    #[arg(long)]
    json: bool,
}

/// Flags of `husk image show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// An image name in $HUSK_HOME/images (`debug`), or a path to a .cpio.
    #[arg(value_name = "NAME|PATH")]
    image: String,
    /// Machine-readable output: {name, path, bytes, manifest}.
    #[arg(long)]
    json: bool,
}

/// One guest image and its manifest, as `list` and `show` present it.
#[derive(Debug, Clone, serde::Serialize)]
struct ImageInfo {
    name: String,
    path: PathBuf,
    bytes: u64,
    /// None: no manifest beside the image, or one that cannot be read.
    manifest: Option<ImageManifest>,
    #[serde(skip)]
    manifest_error: Option<String>,
}

/// Where `husk image build` writes images by default: `$HUSK_HOME/images`.
fn images_dir() -> PathBuf {
    let image = artifacts::image("default");
    image
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| artifacts::home().join("images"))
}

fn inspect(path: &Path) -> anyhow::Result<ImageInfo> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest_path = husk_image::builder::manifest_path_for(path);
    let manifest = std::fs::read(&manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<ImageManifest>(&b).map_err(|e| e.to_string()));
    let (manifest, manifest_error) = match manifest {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(format!("{}: {e}", manifest_path.display()))),
    };
    Ok(ImageInfo {
        name,
        path: path.to_owned(),
        bytes,
        manifest,
        manifest_error,
    })
}

/// Every `*.cpio` in `dir`, by name; none when `dir` does not exist.
fn scan(dir: &Path) -> anyhow::Result<Vec<ImageInfo>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpio") && p.is_file())
        .collect();
    let mut images = paths
        .iter()
        .map(|p| inspect(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

/// The CONSOLE column: whether husk-console runs in this image.
fn console_column(m: &ImageManifest) -> String {
    service_runs(m, husk_image::builder::CONSOLE_SERVICE)
}

/// Whether the service `name` runs in this image: `on`, `when <key>=1` or `no`.
fn service_runs(m: &ImageManifest, name: &str) -> String {
    match m.services.iter().find(|s| s.name == name) {
        None => "no".into(),
        Some(ServiceSpec {
            enabled_by: None, ..
        }) => "on".into(),
        Some(ServiceSpec {
            enabled_by: Some(key),
            ..
        }) => format!("when {key}=1"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

const HEADER: [&str; 7] = [
    "NAME",
    "FLAVOUR",
    "BUILD ID",
    "SIZE",
    "CONSOLE",
    "SELINUX",
    "COMPONENTS",
];

/// A component's version as short as a table cell wants it: up to its first `;` or `,`, without
/// a repeat of its name (`seccomp: libseccomp 2.5.4, API level 6; …` → `libseccomp 2.5.4`).
/// `show` prints it whole.
fn short_version<'a>(name: &str, version: &'a str) -> &'a str {
    let v = version.split([';', ',']).next().unwrap_or(version);
    v.strip_prefix(name)
        .and_then(|r| r.strip_prefix(':'))
        .unwrap_or(v)
        .trim()
}

/// One `list` row.
fn row(i: &ImageInfo) -> [String; 7] {
    let Some(m) = &i.manifest else {
        return [
            i.name.clone(),
            "(no manifest)".into(),
            "-".into(),
            mib(i.bytes),
            "-".into(),
            "-".into(),
            "-".into(),
        ];
    };
    let components: Vec<String> = m
        .components
        .iter()
        .map(|(k, v)| format!("{k} {}", short_version(k, v)))
        .collect();
    [
        i.name.clone(),
        m.flavour.clone(),
        m.build_id.chars().take(12).collect(),
        mib(i.bytes),
        console_column(m),
        if m.selinux.is_some() { "yes" } else { "no" }.into(),
        components.join(", "),
    ]
}

/// Rows with their columns aligned (two spaces apart), header first.
fn render(rows: &[[String; 7]]) -> String {
    crate::table::columns(&HEADER, rows)
}

pub fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let dir = images_dir();
    let images = scan(&dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(ExitCode::SUCCESS);
    }
    if images.is_empty() {
        println!(
            "no guest images in {}: build them with `husk image build` and `husk image build \
             --debug` (scripts/setup.sh does both), or set HUSK_HOME",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = images.iter().map(row).collect();
    print!("{}", render(&rows));
    Ok(ExitCode::SUCCESS)
}

/// A name in the images directory, or a path.
fn find(image: &str) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(image);
    if image.contains('/') || as_path.extension().is_some_and(|x| x == "cpio") {
        if as_path.is_file() {
            return Ok(as_path.to_owned());
        }
        anyhow::bail!("no guest image at {image}");
    }
    let dir = images_dir();
    let path = dir.join(format!("{image}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    let known: Vec<String> = scan(&dir)?.into_iter().map(|i| i.name).collect();
    if known.is_empty() {
        anyhow::bail!(
            "no guest image named {image:?}: {} has none (build them with `husk image build`)",
            dir.display()
        );
    }
    anyhow::bail!(
        "no guest image named {image:?} in {} (known: {})",
        dir.display(),
        known.join(", ")
    )
}

/// `show`'s readable form of one image and its manifest.
fn describe(i: &ImageInfo, m: &ImageManifest) -> String {
    let mut t = crate::table::Table::default();
    t.row("image", i.path.display().to_string())
        .row("size", format!("{} ({} bytes)", mib(i.bytes), i.bytes))
        .row("flavour", &m.flavour)
        .row("build id", &m.build_id)
        .row("schema", m.schema.to_string())
        .row("console", console_column(m))
        .row(
            "tracer",
            service_runs(m, husk_image::builder::TRACER_SERVICE),
        );
    match &m.selinux {
        Some(p) => t.row(
            "selinux",
            format!("{} (version {}, sha256 {})", p.path, p.version, p.sha256),
        ),
        None => t.row("selinux", "no policy"),
    };
    let mut out = format!("{} image {}\n{}", m.flavour, i.name, t.render());
    out.push_str("components:\n");
    let mut c = crate::table::Table::default();
    for (k, v) in &m.components {
        c.row(k, v);
    }
    out.push_str(&c.render());
    out.push_str("services (in start order):\n");
    let mut s = crate::table::Table::default();
    for svc in &m.services {
        let when = match &svc.enabled_by {
            None => "always".to_owned(),
            Some(key) => format!("when {key}=1"),
        };
        let stdio = match svc.stdio {
            ServiceStdio::Log => "log",
            ServiceStdio::Console => "console",
        };
        s.row(
            &svc.name,
            format!("{}  [{when}; stdio {stdio}]", svc.argv.join(" ")),
        );
    }
    out.push_str(&s.render());
    out
}

pub fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let info = inspect(&find(&args.image)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(m) = &info.manifest else {
        anyhow::bail!(
            "{} has no readable manifest ({}): rebuild it with `husk image build`",
            info.path.display(),
            info.manifest_error.as_deref().unwrap_or("unknown")
        );
    };
    print!("{}", describe(&info, m));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocols::manifest::SelinuxPolicy;

    fn service(name: &str, enabled_by: Option<&str>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: vec![format!("/usr/bin/{name}")],
            env: vec![],
            stdio: ServiceStdio::Log,
            enabled_by: enabled_by.map(str::to_owned),
        }
    }

    fn manifest(services: Vec<ServiceSpec>) -> ImageManifest {
        ImageManifest {
            schema: 1,
            build_id: "0123456789abcdef0123456789abcdef".into(),
            flavour: "debug".into(),
            components: [("husk-init", "0.1.0"), ("strace", "6.1-0.1")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            services,
            selinux: Some(SelinuxPolicy {
                path: "/etc/selinux/husk/policy/policy.33".into(),
                version: 33,
                sha256: "ab".repeat(32),
            }),
        }
    }

    fn info(m: Option<ImageManifest>) -> ImageInfo {
        ImageInfo {
            name: "debug".into(),
            path: "/x/images/debug.cpio".into(),
            bytes: 3 * 1048576 + 104858,
            manifest: m,
            manifest_error: None,
        }
    }

    #[test]
    fn console_column_says_when_it_runs() {
        assert_eq!(
            console_column(&manifest(vec![service("agent", None)])),
            "no"
        );
        assert_eq!(
            console_column(&manifest(vec![service("console", None)])),
            "on"
        );
        assert_eq!(
            console_column(&manifest(vec![service("console", Some("husk.console"))])),
            "when husk.console=1"
        );
    }

    #[test]
    fn rows_from_a_manifest_and_without_one() {
        let r = row(&info(Some(manifest(vec![service("console", None)]))));
        assert_eq!(
            r,
            [
                "debug",
                "debug",
                "0123456789ab",
                "3.1 MiB",
                "on",
                "yes",
                "husk-init 0.1.0, strace 6.1-0.1"
            ]
        );
        let mut m = manifest(vec![]);
        m.components.insert(
            "seccomp".into(),
            "seccomp: libseccomp 2.5.4, API level 6; default profile".into(),
        );
        assert!(
            row(&info(Some(m.clone())))[6].ends_with("seccomp libseccomp 2.5.4, strace 6.1-0.1")
        );
        m.selinux = None;
        assert_eq!(row(&info(Some(m)))[5], "no");
        let r = row(&info(None));
        assert_eq!(r[1], "(no manifest)");
        assert_eq!(r[3], "3.1 MiB");
    }

    #[test]
    fn columns_are_aligned() {
        let rows = [row(&info(None)), row(&info(Some(manifest(vec![]))))];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("NAME   FLAVOUR        BUILD ID"),
            "{text}"
        );
        let col = lines[0].find("SIZE").unwrap();
        assert_eq!(&lines[1][col..col + 7], "3.1 MiB");
        assert_eq!(&lines[2][col..col + 7], "3.1 MiB");
    }

    #[test]
    fn show_names_services_and_policy() {
        let m = manifest(vec![
            service("tracer", Some("husk.tracing")),
            service("agent", None),
            service("console", Some("husk.console")),
        ]);
        let text = describe(&info(Some(m.clone())), &m);
        let services = text.split("services (in start order):\n").nth(1).unwrap();
        assert!(
            services.starts_with("  tracer   /usr/bin/tracer  [when husk.tracing=1; stdio log]\n"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["tracer", "when", "husk.tracing=1"]),
            "{text}"
        );
        assert!(
            text.contains("/usr/bin/console  [when husk.console=1; stdio log]"),
            "{text}"
        );
        assert!(text.contains(&"ab".repeat(32)), "{text}");
        assert!(
            text.contains("strace") && text.contains("6.1-0.1"),
            "{text}"
        );
    }

    #[test]
    fn scan_lists_cpio_files_with_or_without_manifests() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan(&dir.path().join("absent")).unwrap().is_empty());
        let m = manifest(vec![]);
        std::fs::write(dir.path().join("b-2.cpio"), b"x").unwrap();
        std::fs::write(dir.path().join("b.cpio"), b"x").unwrap();
        std::fs::write(
            dir.path().join("b.cpio.manifest.json"),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("a.cpio"), b"xy").unwrap();
        std::fs::write(dir.path().join("a.cpio.manifest.json"), b"{not json").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let found = scan(dir.path()).unwrap();
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "b-2"], "by name, not by file name");
        assert!(found[0].manifest.is_none() && found[0].manifest_error.is_some());
        assert_eq!(found[1].manifest.as_ref(), Some(&m));
        assert!(found[2].manifest.is_none());
        assert_eq!(found[0].bytes, 2);
        let json = serde_json::to_value(&found).unwrap();
        assert!(json[0]["manifest"].is_null());
        assert_eq!(json[1]["manifest"]["flavour"], "debug");
        assert!(json[0].get("manifest_error").is_none());
    }
}
