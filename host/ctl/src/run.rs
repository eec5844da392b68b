//! `husk run IMAGE [-- CMD ARGS…]`: a container in a fresh VM, no containerd needed. The
//! container's stdout and stderr stream live, stdin with `-i`, its exit code (or 128+signal)
//! becomes husk's, and Ctrl-C is forwarded to it as SIGINT.
//!
//! Owns the flow boot → agent → create → attach → start → wait → remove → shutdown. Must
//! never leave the VM behind (the Vm is dropped on every path) or lose output (it waits for the
//! output streams to end before it exits).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use husk_agent_client::{open_stream, AgentClient};
use husk_hypervisor::config::Share;
use husk_hypervisor::{Hypervisor, VmConfig};
use husk_protocols::stdio::StreamKind;

use crate::{state, vm, BootArgs};

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
    /// The container image: a root filesystem directory.
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

/// The OCI spec for these arguments (runc's defaults, the command, PATH and `-e` variables).
pub fn spec(args: &RunArgs, hostname: &str) -> anyhow::Result<String> {
    spec_for(&args.command, &args.env, hostname)
}

/// The OCI spec running `command` with `env` (KEY=VALUE) added to the defaults.
pub fn spec_for(
    command: &[String],
    extra_env: &[String],
    hostname: &str,
) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "HOME=/root".to_owned(),
    ];
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
    Ok(v.to_string())
}

fn pump(mut from: UnixStream, mut to: impl Write + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if args.tty {
        bail!(RunError {
            code: RUN_FAILED,
            message: "-t (a terminal) is not supported yet; run without it".into()
        });
    }
    if args.command.is_empty() {
        bail!(RunError {
            code: RUN_FAILED,
            message: format!(
                "no command: give one after `--` (husk run {} -- CMD ARGS…)",
                args.container_image.display()
            ),
        });
    }
    let rootfs = std::fs::canonicalize(&args.container_image)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| RunError {
            code: RUN_FAILED,
            message: format!(
                "image {} is not a root filesystem directory (OCI layouts and archives are not supported yet)",
                args.container_image.display()
            ),
        })?;

    let hv = vm::hypervisor(&args.boot)?;
    let mut cfg = vm::config(&args.boot);
    cfg.shares.push(Share {
        tag: "rootfs".into(),
        host_dir: rootfs,
        read_only: false,
    });
    let name = args.name.clone().unwrap_or_else(|| cfg.id.clone());
    let spec = spec(args, &name)?;
    let _record = state::register(&state::Record {
        id: cfg.id.clone(),
        name: name.clone(),
        image: args.container_image.display().to_string(),
        command: args.command.clone(),
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
    };
    let outcome = execute(
        hv.as_ref(),
        &cfg,
        &spec,
        io,
        Duration::from_secs(args.boot.timeout),
    )?;
    let code = outcome.code;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(RUN_FAILED)))
}

/// Where the container's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// husk's own stdout and stderr; stdin too when asked.
    Terminal { stdin: bool },
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
    let code = rt.block_on(async {
        let client = AgentClient::connect(&vsock, timeout).await.context("connecting to the guest agent")?;
        timings.agent_ready = since(std::time::Instant::now());
        if let Err(e) = client.create_container(id, spec, "rootfs").await {
            let not_found = e.to_string().contains("not found in $PATH");
            bail!(RunError { code: if not_found { COMMAND_NOT_FOUND } else { RUN_FAILED }, message: e.to_string() });
        }
        let (out, err): (Box<dyn Write + Send>, Box<dyn Write + Send>) = match io {
            Io::Terminal { .. } => (Box::new(std::io::stdout()), Box::new(std::io::stderr())),
            Io::Discard => (Box::new(std::io::sink()), Box::new(std::io::sink())),
        };
        let out = pump(open_stream(&vsock, id, StreamKind::Stdout, timeout)?, out);
        let err = pump(open_stream(&vsock, id, StreamKind::Stderr, timeout)?, err);
        let stdin = match io {
            Io::Terminal { stdin: true } => Some(open_stream(&vsock, id, StreamKind::Stdin, timeout)?),
            _ => None,
        };
        client.start_container(id).await.context("starting the container")?;
        timings.started = since(std::time::Instant::now());
        let (stdin_done_tx, mut stdin_done) = tokio::sync::mpsc::channel::<()>(1);
        if let Some(mut s) = stdin {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut s);
                let _ = stdin_done_tx.blocking_send(());
            });
        }
        let wait = client.wait_process(id);
        tokio::pin!(wait);
        let code = loop {
            tokio::select! {
                r = &mut wait => break r.context("waiting for the container")?,
                Some(()) = stdin_done.recv() => client.close_stdin(id).await.context("closing stdin")?,
                _ = tokio::signal::ctrl_c() => {
                    let _ = client.signal_process(id, libc::SIGINT as u32).await;
                }
            }
        };
        // WaitProcess answered after the guest wrote the last byte: drain it before exiting.
        let _ = out.join();
        let _ = err.join();
        timings.exited = since(std::time::Instant::now());
        if let Err(e) = client.remove_container(id).await {
            tracing::warn!(error = %e, "removing the container");
        }
        Ok::<i32, anyhow::Error>(code)
    })?;
    vm.shutdown(vm::SHUTDOWN_TIMEOUT)
        .context("shutting the VM down")?;
    Ok(Outcome { code, timings })
}
