//! `husk image build`: builds a guest image with [`husk_image`] and says what it made.
//!
//! Owns the commands' flags and defaults (`build`: guest images; `busybox`: a container image).
//! Must never build binaries itself: it takes the statically linked binaries it is given.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use husk_hypervisor::artifacts;
use husk_image::{Flavour, ImageSpec};
use husk_protocols::manifest::{ServiceSpec, ServiceStdio};

/// Flags of `husk image build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Build the debug flavour (adds busybox and a shell on the serial console).
    #[arg(long)]
    debug: bool,
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

pub fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let flavour = if args.debug {
        Flavour::Debug
    } else {
        Flavour::Default
    };
    let spec = ImageSpec {
        flavour,
        init: args.init.clone(),
        agent: args.agent.clone(),
        console: args.console.clone(),
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
