//! `husk run IMAGE [-- CMD ARGS…]`: a container in a fresh VM, no containerd needed. The
//! container's stdout and stderr stream live, stdin with `-i`, a terminal with `-t` (raw mode
//! and window size passed on), its exit code (or 128+signal) becomes husk's, and Ctrl-C is
//! forwarded to it as SIGINT (or, on a terminal, typed into it).
//!
//! Owns the flow boot → agent → create → attach → start → wait → remove → shutdown. Must
//! never leave the VM behind (the Vm is dropped on every path) or lose output (it waits for the
//! output streams to end before it exits).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use husk_agent_client::{copy_output, open_stream, AgentClient};
use husk_hypervisor::config::Share;
use husk_hypervisor::{Hypervisor, VmConfig};
use husk_protocols::stdio::StreamKind;

use crate::{terminal, vm, BootArgs};

/// husk's own failure (as `docker run`): the container never ran.
pub const RUN_FAILED: u8 = 125;
/// The id of the one container `husk run` makes (`husk exec --container main`).
pub const CONTAINER_ID: &str = "main";
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
    security: SpecArgs,
    #[command(flatten)]
    pub(crate) boot: BootArgs,
    /// The container image: an OCI image layout (directory or tar), a docker archive (`docker
    /// save`), or a root filesystem directory (used in place).
    #[arg(value_name = "IMAGE")]
    container_image: PathBuf,
    /// Command and arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Flags that shape the container's OCI spec (as docker's), applied in this order: the
/// `--spec` file (or runc's defaults), the image's settings, then each flag.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecArgs {
    /// An OCI runtime spec (config.json) to start from instead of runc's defaults; husk sets
    /// its root, and its command when one is given after `--` or the spec has none.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Mount the container's root read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Add a capability (CAP_NET_ADMIN or NET_ADMIN; ALL for every one); repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (ALL for every one); repeatable.
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Run as this user: UID[:GID].
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// A resource limit: TYPE=SOFT[:HARD] (e.g. nofile=1024:2048); repeatable.
    #[arg(long, value_name = "TYPE=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// seccomp=FILE (an OCI seccomp profile as JSON) or seccomp=unconfined, label=LABEL (the
    /// process's SELinux label), no-new-privileges; repeatable.
    #[arg(long, value_name = "OPTION")]
    pub security_opt: Vec<String>,
}

fn cap_name(flag: &str, cap: &str) -> anyhow::Result<String> {
    match husk_protocols::capabilities::canonical(cap) {
        Some(name) => Ok(name.to_owned()),
        None => bail!("{flag} {cap}: not a capability (e.g. NET_RAW, SYS_ADMIN, ALL)"),
    }
}

impl SpecArgs {
    /// The spec to start from: the `--spec` file, or runc's defaults.
    fn base(&self) -> anyhow::Result<serde_json::Value> {
        let Some(path) = &self.spec else {
            return Ok(serde_json::to_value(oci_spec::runtime::Spec::default())?);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--spec {}: cannot read it", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("--spec {}: not JSON", path.display()))?;
        if !v.is_object() {
            bail!("--spec {}: an OCI spec is a JSON object", path.display());
        }
        Ok(v)
    }

    /// Applies the flags to `v`.
    fn apply(&self, v: &mut serde_json::Value) -> anyhow::Result<()> {
        if self.read_only {
            v["root"]["readonly"] = true.into();
        }
        if !self.cap_add.is_empty() || !self.cap_drop.is_empty() {
            let caps = &mut v["process"]["capabilities"];
            for set in [
                "bounding",
                "effective",
                "permitted",
                "inheritable",
                "ambient",
            ] {
                let mut list: Vec<String> = caps[set]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for c in &self.cap_drop {
                    if c.eq_ignore_ascii_case("ALL") {
                        list.clear();
                    } else {
                        let name = cap_name("--cap-drop", c)?;
                        list.retain(|x| *x != name);
                    }
                }
                // Added capabilities go to the three sets a root process uses, as docker's.
                let adds: &[String] = if matches!(set, "inheritable" | "ambient") {
                    &[]
                } else {
                    &self.cap_add
                };
                for c in adds {
                    let names = if c.eq_ignore_ascii_case("ALL") {
                        husk_protocols::capabilities::NAMES
                            .iter()
                            .map(|s| s.to_string())
                            .collect()
                    } else {
                        vec![cap_name("--cap-add", c)?]
                    };
                    for n in names {
                        if !list.contains(&n) {
                            list.push(n);
                        }
                    }
                }
                caps[set] = serde_json::json!(list);
            }
        }
        if let Some(user) = &self.user {
            let (u, g) = user.split_once(':').unwrap_or((user, "0"));
            let (Ok(uid), Ok(gid)) = (u.parse::<u32>(), g.parse::<u32>()) else {
                bail!("--user {user}: expected UID[:GID] as numbers");
            };
            v["process"]["user"]["uid"] = uid.into();
            v["process"]["user"]["gid"] = gid.into();
        }
        for l in &self.ulimit {
            let parsed = l.split_once('=').and_then(|(t, lim)| {
                let (soft, hard) = lim.split_once(':').unwrap_or((lim, lim));
                Some((t, soft.parse::<u64>().ok()?, hard.parse::<u64>().ok()?))
            });
            let Some((typ, soft, hard)) = parsed else {
                bail!("--ulimit {l}: expected TYPE=SOFT[:HARD], e.g. nofile=1024:2048");
            };
            let typ = format!("RLIMIT_{}", typ.to_ascii_uppercase());
            let rl = v["process"]["rlimits"]
                .as_array_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut rl: Vec<_> = rl
                .into_iter()
                .filter(|r| r["type"] != typ.as_str())
                .collect();
            rl.push(serde_json::json!({"type": typ, "soft": soft, "hard": hard}));
            v["process"]["rlimits"] = rl.into();
        }
        for o in &self.security_opt {
            match o.split_once('=') {
                Some(("seccomp", "unconfined")) => {
                    v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"});
                }
                Some(("seccomp", file)) => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("--security-opt seccomp={file}: cannot read it"))?;
                    v["linux"]["seccomp"] = serde_json::from_str(&text)
                        .with_context(|| format!("--security-opt seccomp={file}: not JSON"))?;
                }
                Some(("label", label)) => v["process"]["selinuxLabel"] = label.into(),
                None if o == "no-new-privileges" => v["process"]["noNewPrivileges"] = true.into(),
                _ => bail!(
                    "--security-opt {o}: expected seccomp=FILE, seccomp=unconfined, label=LABEL or no-new-privileges"
                ),
            }
        }
        Ok(())
    }
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
fn resolve_user(user: &str, rootfs: &Path) -> anyhow::Result<(u32, u32)> {
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
    rootfs: &Path,
    terminal: bool,
    flags: &SpecArgs,
) -> anyhow::Result<String> {
    let mut env = image.env.clone().unwrap_or_default();
    if terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut v = flags.base()?;
    let from_file = flags.spec.is_some();
    if !from_file {
        // runc's default root is read-only; containerd's and docker's are not (--read-only).
        v["root"]["readonly"] = false.into();
    }
    if from_file {
        // The spec's own environment comes first; the image's fills what it lacks.
        let own: Vec<String> = v["process"]["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for e in own {
            let k = e.split('=').next().unwrap_or_default().to_owned();
            env.retain(|x| !x.starts_with(&format!("{k}=")));
            env.push(e);
        }
    }
    let spec_args = v["process"]["args"].clone();
    let spec_host = v["hostname"].clone();
    spec_value(&mut v, command, &mut env, extra_env, hostname)?;
    if from_file {
        // A command after `--` wins; without one, the spec's own.
        if command.is_empty() && !spec_args.is_null() {
            v["process"]["args"] = spec_args;
        }
        // The spec's hostname, or none (it may have no UTS namespace to set one in).
        match spec_host.is_string() {
            true => v["hostname"] = spec_host,
            false => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("hostname");
                }
            }
        }
    } else {
        // containerd's and docker's default capabilities (runc's defaults keep only three).
        let caps = serde_json::json!(husk_protocols::capabilities::CONTAINER_DEFAULTS);
        for set in ["bounding", "effective", "permitted"] {
            v["process"]["capabilities"][set] = caps.clone();
        }
        for set in ["inheritable", "ambient"] {
            v["process"]["capabilities"][set] = serde_json::json!([]);
        }
    }
    v["process"]["terminal"] = terminal.into();
    if let Some(dir) = image.working_dir.as_deref().filter(|d| !d.is_empty()) {
        v["process"]["cwd"] = dir.into();
    }
    if let Some(user) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (uid, gid) = resolve_user(user, rootfs)?;
        v["process"]["user"] = serde_json::json!({ "uid": uid, "gid": gid });
    }
    flags.apply(&mut v)?;
    Ok(v.to_string())
}

/// The OCI spec running `command` with `env` (KEY=VALUE) added to the defaults.
pub fn spec_for(
    command: &[String],
    extra_env: &[String],
    hostname: &str,
) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    v["root"]["readonly"] = false.into();
    spec_value(&mut v, command, &mut Vec::new(), extra_env, hostname)?;
    Ok(v.to_string())
}

/// runc's default spec with the command, hostname and environment: `env` (the image's, may be
/// empty) gets a default PATH and HOME when it has none, then `extra_env` overrides.
fn spec_value(
    v: &mut serde_json::Value,
    command: &[String],
    env: &mut Vec<String>,
    extra_env: &[String],
    hostname: &str,
) -> anyhow::Result<()> {
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
    Ok(())
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
    let config = husk_config::Config::load(args.boot.config.as_deref())?;
    let resolved = vm::resolve_with(&args.boot, &config);
    let traced = crate::telemetry::get();
    // One trace per run: every span below (the VM's boot, the agent's calls, the guest's own
    // spans) is a child of this one.
    let root = tracing::info_span!(
        parent: None,
        "husk.run",
        otel.name = "husk run",
        image = %args.container_image.display(),
    );
    let result = root.in_scope(|| run_traced(args, resolved));
    drop(root);
    if let Some(t) = traced {
        if !t.flush() {
            tracing::warn!("not every span of this run reached the trace store or collector");
        }
    }
    result
}

fn run_traced(args: &RunArgs, resolved: vm::Resolved) -> anyhow::Result<ExitCode> {
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
    if command.is_empty() && args.security.spec.is_none() {
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
    let spec = spec_for_image(
        &command,
        &image.config,
        &args.env,
        &name,
        &rootfs,
        args.tty,
        &args.security,
    )?;
    let record = husk_state::register(
        &resolved.state_dir,
        &husk_state::Record {
            id: cfg.id.clone(),
            name: name.clone(),
            image: args.container_image.display().to_string(),
            command: command.clone(),
            pid: std::process::id(),
            created: husk_state::epoch_secs(),
            backend: hv.describe(),
            origin: husk_state::Origin::Run,
            vsock: None,
            console: husk_state::console_enabled(&cfg.initrd, &cfg.extra_cmdline),
            guest_image: cfg.initrd.clone(),
            containers: vec![CONTAINER_ID.into()],
        },
    )
    .context("recording the sandbox in the state directory")?;

    let io = Io::Terminal {
        stdin: args.interactive,
        tty: args.tty,
    };
    // Once the guest is up, `husk exec` can reach it.
    let on_ready = |vsock: &Path| {
        if let Err(e) = record.update(|r| r.vsock = Some(vsock.to_owned())) {
            tracing::warn!(error = %e, "recording the sandbox's vsock socket");
        }
    };
    let outcome = execute(hv.as_ref(), &cfg, &spec, io, resolved.timeout, &on_ready)?;
    let code = outcome.code;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(RUN_FAILED)))
}

/// How long the guest's last spans may take to arrive once its VM has gone.
const TRACE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

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
    on_ready: &dyn Fn(&Path),
) -> anyhow::Result<Outcome> {
    let sink = crate::telemetry::get().map(husk_trace::HostTracing::sink);
    let cfg = &VmConfig {
        trace: sink.is_some(),
        traceparent: husk_telemetry::propagation::current_traceparent(),
        ..cfg.clone()
    };
    let (mut vm, report) =
        tracing::info_span!("vm.boot", otel.name = "vm boot").in_scope(|| {
            let mut vm = hv.boot(cfg).context("booting the VM")?;
            let report = vm.wait_ready(timeout).context("waiting for the guest")?;
            anyhow::Ok((vm, report))
        })?;
    let traces =
        husk_trace::receive_guest_spans(vm.take_trace_listener(), report.clock_offset_ns, sink);
    let since = |t: std::time::Instant| t.saturating_duration_since(vm.launched_at());
    let mut timings = Timings {
        init_ready: since(std::time::Instant::now()),
        ..Timings::default()
    };
    let vsock = vm.vsock_path().to_owned();
    on_ready(&vsock);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let id = CONTAINER_ID;
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
    let shut = vm.shutdown(vm::SHUTDOWN_TIMEOUT);
    if let Some(traces) = traces {
        traces.finish(TRACE_DRAIN_TIMEOUT);
    }
    shut.context("shutting the VM down")?;
    Ok(Outcome { code, timings })
}
