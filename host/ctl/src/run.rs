//! `husk run IMAGE [-- CMD ARGS…]`: a container in a fresh VM, no containerd needed. The
//! container's stdout and stderr stream live, stdin with `-i`, a terminal with `-t` (raw mode
//! and window size passed on), its exit code (or 128+signal) becomes husk's, and Ctrl-C is
//! forwarded to it as SIGINT (or, on a terminal, typed into it).
//!
//! Owns the flow boot → agent → create → attach → start → wait → remove → shutdown. Must
//! never leave the VM behind (the Vm is dropped on every path) or lose output (it waits for the
//! output streams to end before it exits).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use husk_agent_client::{copy_output, open_stream, AgentClient};
use husk_hypervisor::config::Share;
use husk_hypervisor::{Hypervisor, VmConfig};
use husk_protocols::stdio::StreamKind;

use crate::{state, terminal, vm, BootArgs};

/// husk's own failure (as `docker run`): the container never ran.
pub const RUN_FAILED: u8 = 125;
/// The command could not be found in the image.
pub const COMMAND_NOT_FOUND: u8 = 127;

/// Flags of `husk run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Remove everything when the container exits (always the case: the VM is per run).
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Environment variable for the container (KEY=VALUE); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Container name (default: the sandbox id).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    boot: BootArgs,
    /// The container image: an OCI image layout (directory or tar), a docker archive (`docker
    /// save`), or a root filesystem directory (used in place).
    #[arg(value_name = "IMAGE")]
    container_image: PathBuf,
    /// Command and arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// An error that already chose husk's exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub code: u8,
    pub message: String,
}

/// The process arguments: the image's entrypoint, then the given command or the image's cmd.
pub fn command_for(given: &[String], image: &husk_oci::RunConfig) -> Vec<String> {
    let mut argv = image.entrypoint.clone().unwrap_or_default();
    if given.is_empty() {
        argv.extend(image.cmd.clone().unwrap_or_default());
    } else {
        argv.extend(given.iter().cloned());
    }
    argv
}

/// Resolves an image's `User` (`uid[:gid]`, or names from the rootfs' /etc/passwd and /etc/group).
fn resolve_user(user: &str, rootfs: &std::path::Path) -> anyhow::Result<(u32, u32)> {
    let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
        std::fs::read_to_string(rootfs.join(file))
            .ok()?
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name))
                    .then(|| f.get(field)?.parse().ok())
                    .flatten()
            })
    };
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let uid = u
        .parse()
        .ok()
        .or_else(|| lookup("etc/passwd", u, 2))
        .with_context(|| format!("image user {u:?} is not in the image's /etc/passwd"))?;
    let gid = match g {
        Some(g) => g
            .parse()
            .ok()
            .or_else(|| lookup("etc/group", g, 2))
            .with_context(|| format!("image group {g:?} is not in the image's /etc/group"))?,
        None => {
            lookup("etc/passwd", u, 3).unwrap_or(if u.parse::<u32>().is_ok() { uid } else { 0 })
        }
    };
    Ok((uid, gid))
}

/// The OCI spec running `command` from an image with configuration `image`, plus `-e` variables.
pub fn spec_for_image(
    command: &[String],
    image: &husk_oci::RunConfig,
    extra_env: &[String],
    hostname: &str,
    rootfs: &std::path::Path,
    terminal: bool,
) -> anyhow::Result<String> {
    let mut env = image.env.clone().unwrap_or_default();
    if terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut v = spec_value(command, &mut env, extra_env, hostname)?;
    v["process"]["terminal"] = terminal.into();
    if let Some(dir) = image.working_dir.as_deref().filter(|d| !d.is_empty()) {
        v["process"]["cwd"] = dir.into();
    }
    if let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (uid, gid) = resolve_user(user, rootfs)?;
        v["process"]["user"] = serde_json::json!({ "uid": uid, "gid": gid });
    }
    Ok(v.to_string())
}

/// The OCI spec running `command` with `env` (KEY=VALUE) added to the defaults.
pub fn spec_for(
    command: &[String],
    extra_env: &[String],
    hostname: &str,
) -> anyhow::Result<String> {
    Ok(spec_value(command, &mut Vec::new(), extra_env, hostname)?.to_string())
}

/// runc's default spec with the command, hostname and environment: `env` (the image's, may be
/// empty) gets a default PATH and HOME when it has none, then `extra_env` overrides.
fn spec_value(
    command: &[String],
    env: &mut Vec<String>,
    extra_env: &[String],
    hostname: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    for (k, default) in [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
    ] {
        if !env.iter().any(|e| e.starts_with(&format!("{k}="))) {
            env.push(format!("{k}={default}"));
        }
    }
    for kv in extra_env {
        let Some((k, _)) = kv.split_once('=') else {
            bail!("-e {kv:?}: expected KEY=VALUE")
        };
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(kv.clone());
    }
    v["process"]["args"] = serde_json::json!(command);
    v["process"]["env"] = serde_json::json!(env);
    v["process"]["terminal"] = false.into();
    v["hostname"] = hostname.into();
    // runc's default root is read-only; containerd's and docker's are not.
    v["root"]["readonly"] = false.into();
    Ok(v)
}

/// A sandbox's work directory, removed with everything in it when dropped.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let resolved = vm::resolve(&args.boot)?;
    let hv = vm::hypervisor(&resolved)?;
    let mut cfg = resolved.vm;
    // Layered images are unpacked into a work directory of this sandbox, removed at the end.
    let work = WorkDir(
        husk_hypervisor::artifacts::home()
            .join("sandboxes")
            .join(&cfg.id),
    );
    let image = husk_oci::prepare(&args.container_image, &work.0).map_err(|e| RunError {
        code: RUN_FAILED,
        message: e.to_string(),
    })?;
    let command = command_for(&args.command, &image.config);
    if command.is_empty() {
        bail!(RunError {
            code: RUN_FAILED,
            message: format!(
                "no command: the image has none; give one after `--` (husk run {} -- CMD ARGS…)",
                args.container_image.display()
            ),
        });
    }
    let rootfs = std::fs::canonicalize(&image.rootfs).map_err(|e| RunError {
        code: RUN_FAILED,
        message: format!("image root {}: {e}", image.rootfs.display()),
    })?;
    cfg.shares.push(Share {
        tag: "rootfs".into(),
        host_dir: rootfs.clone(),
        read_only: true,
    });
    let name = args.name.clone().unwrap_or_else(|| cfg.id.clone());
    let spec = spec_for_image(&command, &image.config, &args.env, &name, &rootfs, args.tty)?;
    let _record = state::register(&state::Record {
        id: cfg.id.clone(),
        name: name.clone(),
        image: args.container_image.display().to_string(),
        command: command.clone(),
        pid: std::process::id(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        backend: hv.describe(),
    })
    .context("recording the sandbox in the state directory")?;

    let io = Io::Terminal {
        stdin: args.interactive,
        tty: args.tty,
    };
    let outcome = execute(hv.as_ref(), &cfg, &spec, io, resolved.timeout)?;
    let code = outcome.code;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(RUN_FAILED)))
}

/// Where the container's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// husk's own stdout and stderr; stdin too when asked; with `tty`, the container runs on a
    /// terminal whose output comes on stdout.
    Terminal { stdin: bool, tty: bool },
    /// Read and dropped (benchmarks).
    Discard,
}

/// When each stage of a run finished, counted from the VM's launch.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timings {
    pub init_ready: Duration,
    pub agent_ready: Duration,
    pub started: Duration,
    pub exited: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub code: i32,
    pub timings: Timings,
}

/// Runs the container described by `spec` (rootfs on the `rootfs` share of `cfg`) in a VM of
/// its own: boot, agent, create, attach, start, wait for exit and output, remove, shut down.
pub fn execute(
    hv: &dyn Hypervisor,
    cfg: &VmConfig,
    spec: &str,
    io: Io,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let mut vm = hv.boot(cfg).context("booting the VM")?;
    vm.wait_ready(timeout).context("waiting for the guest")?;
    let since = |t: std::time::Instant| t.saturating_duration_since(vm.launched_at());
    let mut timings = Timings {
        init_ready: since(std::time::Instant::now()),
        ..Timings::default()
    };
    let vsock = vm.vsock_path().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let id = "main";
    let (stdin, tty) = match io {
        Io::Terminal { stdin, tty } => (stdin, tty),
        Io::Discard => (false, false),
    };
    let code = rt.block_on(async {
        let client = AgentClient::connect(&vsock, timeout)
            .await
            .context("connecting to the guest agent")?;
        timings.agent_ready = since(std::time::Instant::now());
        client
            .create_sandbox(&cfg.id, "", &[])
            .await
            .context("creating the sandbox")?;
        if let Err(e) = client.create_container(id, spec, "rootfs").await {
            let not_found = e.to_string().contains("not found in $PATH");
            bail!(RunError {
                code: if not_found {
                    COMMAND_NOT_FOUND
                } else {
                    RUN_FAILED
                },
                message: e.to_string()
            });
        }
        let (out, err): (Box<dyn Write + Send>, Box<dyn Write + Send>) = match io {
            Io::Terminal { .. } => (Box::new(std::io::stdout()), Box::new(std::io::stderr())),
            Io::Discard => (Box::new(std::io::sink()), Box::new(std::io::sink())),
        };
        let out = copy_output(open_stream(&vsock, id, StreamKind::Stdout, timeout)?, out);
        // On a terminal, stderr comes through the terminal, on stdout.
        let err = match tty {
            false => Some(copy_output(
                open_stream(&vsock, id, StreamKind::Stderr, timeout)?,
                err,
            )),
            true => None,
        };
        let input = match stdin {
            true => Some(open_stream(&vsock, id, StreamKind::Stdin, timeout)?),
            false => None,
        };
        let mut winch = match tty {
            true => {
                if let Some((rows, cols)) = terminal::size() {
                    client
                        .resize_tty(id, "", rows, cols)
                        .await
                        .context("sizing the terminal")?;
                }
                Some(tokio::signal::unix::signal(
                    tokio::signal::unix::SignalKind::window_change(),
                )?)
            }
            false => None,
        };
        // Raw mode only while the container runs, restored on every path out of here.
        let _raw = match (tty, stdin) {
            (true, true) => terminal::RawMode::enter(),
            _ => None,
        };
        client
            .start_container(id)
            .await
            .context("starting the container")?;
        timings.started = since(std::time::Instant::now());
        if let Some(mut s) = input {
            // The end of husk's stdin ends the stream, which the guest sees after the last byte
            // (CloseStdin would race the bytes still in flight on the stream).
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut s);
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
        let wait = client.wait_process(id);
        tokio::pin!(wait);
        let code = loop {
            tokio::select! {
                r = &mut wait => break r.context("waiting for the container")?,
                _ = tokio::signal::ctrl_c() => {
                    let _ = client.signal_process(id, libc::SIGINT as u32).await;
                }
                Some(()) = async { winch.as_mut()?.recv().await } => {
                    if let Some((rows, cols)) = terminal::size() {
                        let _ = client.resize_tty(id, "", rows, cols).await;
                    }
                }
            }
        };
        // WaitProcess answered after the guest wrote the last byte: drain it before exiting.
        let _ = out.join();
        if let Some(err) = err {
            let _ = err.join();
        }
        timings.exited = since(std::time::Instant::now());
        if let Err(e) = client.destroy_sandbox(&cfg.id).await {
            tracing::warn!(error = %e, "destroying the sandbox");
        }
        Ok::<i32, anyhow::Error>(code)
    })?;
    vm.shutdown(vm::SHUTDOWN_TIMEOUT)
        .context("shutting the VM down")?;
    Ok(Outcome { code, timings })
}
