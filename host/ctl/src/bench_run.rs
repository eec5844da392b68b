//! `husk bench run`: what a person waits for with `husk run`, against a reference measured in
//! the same invocation on the same machine and the same root filesystem.
//!
//! - latency of `husk run busybox true` (median of N) and its split (VM boot to init ready,
//!   agent ready, container started, exited), against `runc run` of the same rootfs;
//! - agent RPC round trip (health Check) through the VM's vsock, against the same husk-agent
//!   binary served on a host Unix socket;
//! - stdout throughput of one container (64 MiB through `dd`), against `cat` of the same bytes
//!   on the host.
//!
//! Owns the procedure and its report. Must never be used as a test assertion.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_agent_client::AgentClient;
use husk_hypervisor::config::Share;
use husk_hypervisor::{artifacts, Hypervisor, VmConfig};
use serde::Serialize;

use crate::bench::{print_stats, stats, Setup, Stats};
use crate::run::{execute, spec_for, Io, Timings};

const TIMEOUT: Duration = Duration::from_secs(120);
const RPC_CALLS: usize = 500;
pub(crate) const THROUGHPUT_BYTES: usize = 64 << 20;

/// Flags of `husk bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunBenchArgs {
    /// Runs of each command.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Statically linked busybox for the rootfs.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// husk-agent binary for the host-side RPC reference.
    #[arg(
        long,
        default_value = "target/x86_64-unknown-linux-gnu/release/husk-agent"
    )]
    agent: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Split {
    init_ready_ms: f64,
    agent_ready_ms: f64,
    started_ms: f64,
    exited_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    runs: usize,
    husk_run_true: Stats,
    husk_split_median: Split,
    runc_run_true: Stats,
    latency_ratio: f64,
    check_rpc_vsock: Stats,
    check_rpc_host_unix: Stats,
    rpc_ratio: f64,
    stdout_mib_s: f64,
    host_cat_mib_s: f64,
    throughput_ratio: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn husk_cfg(rootfs: &Path) -> VmConfig {
    let mut c = VmConfig::new(artifacts::kernel(), artifacts::image("default"));
    c.run_root = artifacts::run_root();
    c.log_root = artifacts::log_root();
    c.shares.push(Share {
        tag: "rootfs".into(),
        host_dir: rootfs.to_owned(),
        read_only: true,
    });
    c
}

fn runc_true(bundle: &Path, i: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("husk-bench-{}-{i}", std::process::id()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running runc (apt-get install runc)")?;
    if !st.success() {
        bail!("runc run failed: {st}");
    }
    Ok(t.elapsed())
}

fn runc_bundle(dir: &Path, rootfs: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let st = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .status()
        .context("runc spec (apt-get install runc)")?;
    if !st.success() {
        bail!("runc spec failed: {st}");
    }
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    v["root"] = serde_json::json!({ "path": rootfs, "readonly": false });
    v["process"]["args"] = serde_json::json!(["true"]);
    v["process"]["terminal"] = false.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    Ok(())
}

async fn check_rounds(client: &AgentClient) -> anyhow::Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(RPC_CALLS);
    for _ in 0..RPC_CALLS {
        let t = Instant::now();
        client.check().await?;
        v.push(t.elapsed());
    }
    Ok(v)
}

pub(crate) fn rpc_in_vm(hv: &dyn Hypervisor, rootfs: &Path) -> anyhow::Result<Vec<Duration>> {
    let mut vm = hv.boot(&husk_cfg(rootfs))?;
    vm.wait_ready(TIMEOUT)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(async {
        let client = AgentClient::connect(vm.vsock_path(), TIMEOUT).await?;
        check_rounds(&client).await
    })?;
    vm.shutdown(crate::vm::SHUTDOWN_TIMEOUT)?;
    Ok(v)
}

fn rpc_on_host(agent: &Path, scratch: &Path) -> anyhow::Result<Vec<Duration>> {
    let sock = scratch.join("agent.sock");
    let mut child = Command::new(agent)
        .args(["--no-stdio", "--listen"])
        .arg(format!("unix://{}", sock.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} on the host", agent.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        // The agent binds its socket as it starts; connect as soon as it is there.
        let deadline = Instant::now() + TIMEOUT;
        let client = loop {
            match AgentClient::connect_unix(&sock, TIMEOUT).await {
                Ok(c) => break c,
                Err(_)
                    if Instant::now() < deadline && child.try_wait().ok().flatten().is_none() =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("the host reference agent")),
            }
        };
        check_rounds(&client).await
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Time for a container in a fresh VM to write [`THROUGHPUT_BYTES`] (`/data.bin`, written into
/// `rootfs` first) to its stdout, which the host reads over vsock: start to exit.
pub(crate) fn stdout_throughput(hv: &dyn Hypervisor, rootfs: &Path) -> anyhow::Result<Duration> {
    let data_path = rootfs.join("data.bin");
    if !data_path.exists() {
        let data: Vec<u8> = (0..THROUGHPUT_BYTES)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&data_path, &data)?;
    }
    let spec_dd = spec_for(
        &["dd".into(), "if=/data.bin".into(), "bs=1M".into()],
        &[],
        "bench",
    )?;
    let o = execute(
        hv,
        &husk_cfg(rootfs),
        &spec_dd,
        Io::Discard,
        TIMEOUT,
        &|_| {},
    )?;
    if o.code != 0 {
        bail!("dd in the container exited {}", o.code);
    }
    Ok(o.timings.exited.saturating_sub(o.timings.started))
}

fn host_cat(data: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new("cat")
        .arg(data)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("cat failed: {st}");
    }
    Ok(t.elapsed())
}

pub fn run(args: &RunBenchArgs) -> anyhow::Result<ExitCode> {
    let setup = Setup::new("bench-run", args.runs)?;
    let r = measure(args, setup.hv.as_ref(), &setup.scratch)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r);
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(args: &RunBenchArgs, hv: &dyn Hypervisor, scratch: &Path) -> anyhow::Result<Report> {
    let rootfs =
        husk_image::container_rootfs::busybox_rootfs(&args.busybox, &scratch.join("rootfs"))?;
    let bundle = scratch.join("runc-bundle");
    runc_bundle(&bundle, &rootfs)?;
    let spec_true = spec_for(&["true".to_owned()], &[], "bench")?;

    let (mut husk, mut runc, mut splits) = (Vec::new(), Vec::new(), Vec::<Timings>::new());
    for i in 0..args.runs {
        eprintln!(
            "[bench] run {}/{}: husk run true, runc run true",
            i + 1,
            args.runs
        );
        let t = Instant::now();
        let o = execute(
            hv,
            &husk_cfg(&rootfs),
            &spec_true,
            Io::Discard,
            TIMEOUT,
            &|_| {},
        )?;
        husk.push(t.elapsed());
        if o.code != 0 {
            bail!("husk run true exited {}", o.code);
        }
        splits.push(o.timings);
        runc.push(runc_true(&bundle, i)?);
    }
    let split = Split {
        init_ready_ms: ms(median(splits.iter().map(|t| t.init_ready).collect())),
        agent_ready_ms: ms(median(splits.iter().map(|t| t.agent_ready).collect())),
        started_ms: ms(median(splits.iter().map(|t| t.started).collect())),
        exited_ms: ms(median(splits.iter().map(|t| t.exited).collect())),
    };

    eprintln!(
        "[bench] agent Check round trips: {RPC_CALLS} through vsock, {RPC_CALLS} on a host socket"
    );
    let vsock_rpc = stats(&rpc_in_vm(hv, &rootfs)?);
    let host_rpc = stats(&rpc_on_host(&args.agent, scratch)?);

    eprintln!("[bench] stdout throughput: 64 MiB through a container, and cat on the host");
    let in_vm = stdout_throughput(hv, &rootfs)?;
    let cat = host_cat(&rootfs.join("data.bin"))?;
    let mib = THROUGHPUT_BYTES as f64 / 1048576.0;

    let husk_stats = stats(&husk);
    let runc_stats = stats(&runc);
    Ok(Report {
        backend: hv.describe(),
        runs: args.runs,
        latency_ratio: husk_stats.median_ms / runc_stats.median_ms.max(f64::MIN_POSITIVE),
        husk_run_true: husk_stats,
        husk_split_median: split,
        runc_run_true: runc_stats,
        rpc_ratio: vsock_rpc.median_ms / host_rpc.median_ms.max(f64::MIN_POSITIVE),
        check_rpc_vsock: vsock_rpc,
        check_rpc_host_unix: host_rpc,
        stdout_mib_s: mib / in_vm.as_secs_f64().max(f64::MIN_POSITIVE),
        host_cat_mib_s: mib / cat.as_secs_f64().max(f64::MIN_POSITIVE),
        throughput_ratio: cat.as_secs_f64() / in_vm.as_secs_f64().max(f64::MIN_POSITIVE),
    })
}

fn print(r: &Report) {
    println!("run benchmark: {} runs each; {}", r.runs, r.backend);
    println!();
    print_stats(
        "latency of `true`",
        &[
            ("husk run (fresh VM each)", &r.husk_run_true),
            ("runc run (same rootfs, no VM)", &r.runc_run_true),
        ],
    );
    println!(
        "  ratio husk / runc (median)          {:.1}×",
        r.latency_ratio
    );
    let s = &r.husk_split_median;
    println!(
        "  husk split (median, from VM launch): init ready {:.0} ms, agent ready {:.0} ms, started {:.0} ms, exited {:.0} ms",
        s.init_ready_ms, s.agent_ready_ms, s.started_ms, s.exited_ms
    );
    println!();
    println!("  agent Check round trip ({RPC_CALLS} calls)   min / median / max");
    for (name, s) in [
        ("through the VM's vsock", &r.check_rpc_vsock),
        ("same agent, host Unix socket", &r.check_rpc_host_unix),
    ] {
        let us = |ms: f64| ms * 1000.0;
        println!(
            "  {name:<34}  {:.0} / {:.0} / {:.0} µs",
            us(s.min_ms),
            us(s.median_ms),
            us(s.max_ms)
        );
    }
    println!("  ratio vsock / host (median)         {:.1}×", r.rpc_ratio);
    println!();
    println!(
        "  stdout throughput, 64 MiB: container {:.1} MiB/s, host cat {:.0} MiB/s, ratio {:.3}×",
        r.stdout_mib_s, r.host_cat_mib_s, r.throughput_ratio
    );
}
