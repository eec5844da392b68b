//! `husk bench vsock`: husk's own vhost-user vsock device (`husk-vhost-user`, the one QEMU uses
//! for every husk VM) against rust-vmm's `vhost-device-vsock` on the same QEMU, kernel, image
//! and container: agent RPC round-trip latency (health Check) and container stdout throughput
//! (64 MiB), interleaved run by run, with the ratios.
//!
//! Owns the procedure and its report. Must never be used as a test assertion.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use husk_hypervisor::qemu::REFERENCE_VSOCK;
use husk_hypervisor::{BackendChoice, HostPaths, Hypervisor};
use serde::Serialize;

use crate::bench::{print_stats, stats, Setup, Stats};
use crate::bench_run::{rpc_in_vm, stdout_throughput, THROUGHPUT_BYTES};

/// Flags of `husk bench vsock`.
#[derive(Debug, Clone, clap::Args)]
pub struct VsockBenchArgs {
    /// Runs of each measurement, per back end.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Statically linked busybox for the container's rootfs.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// The reference back end (`cargo install --locked vhost-device-vsock`).
    #[arg(long, default_value = REFERENCE_VSOCK)]
    reference: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Side {
    program: String,
    /// Each run's median Check round trip.
    rpc: Stats,
    /// Each run's stdout time for 64 MiB.
    stdout: Stats,
    stdout_mib_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    runs: usize,
    husk: Side,
    reference: Side,
    /// husk's median round trip / the reference's (below 1: husk is faster).
    rpc_ratio: f64,
    /// husk's throughput / the reference's (above 1: husk is faster).
    throughput_ratio: f64,
}

fn backend(vsock: PathBuf) -> anyhow::Result<Box<dyn Hypervisor>> {
    let paths = HostPaths {
        vsock_backend: vsock,
        ..HostPaths::system()
    };
    Ok(husk_hypervisor::for_host(BackendChoice::Qemu, &paths)?)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub fn run(args: &VsockBenchArgs) -> anyhow::Result<ExitCode> {
    let setup = Setup::new("bench-vsock", args.runs)?;
    let reference =
        husk_hypervisor::host_probe::find_program(&args.reference).with_context(|| {
            format!(
            "{} not found: install the reference with `cargo install --locked vhost-device-vsock`",
            args.reference.display()
        )
        })?;
    let sides = [
        (
            "husk-vhost-user",
            backend(husk_hypervisor::host_probe::VSOCK_BACKEND.into())?,
        ),
        ("vhost-device-vsock", backend(reference)?),
    ];
    let rootfs =
        husk_image::container_rootfs::busybox_rootfs(&args.busybox, &setup.scratch.join("rootfs"))?;
    let mut rpc: [Vec<Duration>; 2] = Default::default();
    let mut out: [Vec<Duration>; 2] = Default::default();
    for i in 0..args.runs {
        for (k, (name, hv)) in sides.iter().enumerate() {
            eprintln!(
                "[bench] run {}/{}: {name}: 500 Check round trips, 64 MiB of stdout",
                i + 1,
                args.runs
            );
            rpc[k].push(median(&rpc_in_vm(hv.as_ref(), &rootfs)?));
            out[k].push(stdout_throughput(hv.as_ref(), &rootfs)?);
        }
    }
    let mib = THROUGHPUT_BYTES as f64 / 1048576.0;
    let side = |k: usize, name: &str| Side {
        program: name.to_owned(),
        rpc: stats(&rpc[k]),
        stdout: stats(&out[k]),
        stdout_mib_s: mib / median(&out[k]).as_secs_f64().max(f64::MIN_POSITIVE),
    };
    let husk = side(0, sides[0].0);
    let reference = side(1, sides[1].0);
    let r = Report {
        backend: sides[0].1.describe(),
        runs: args.runs,
        rpc_ratio: husk.rpc.median_ms / reference.rpc.median_ms.max(f64::MIN_POSITIVE),
        throughput_ratio: husk.stdout_mib_s / reference.stdout_mib_s.max(f64::MIN_POSITIVE),
        husk,
        reference,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "vsock benchmark: {} interleaved runs per back end; {}",
            r.runs, r.backend
        );
        println!();
        print_stats(
            "agent Check round trip (median of 500, per run)",
            &[
                ("husk-vhost-user", &r.husk.rpc),
                ("vhost-device-vsock", &r.reference.rpc),
            ],
        );
        println!("  ratio husk / reference (median)  {:.2}×", r.rpc_ratio);
        println!();
        print_stats(
            "64 MiB of container stdout",
            &[
                ("husk-vhost-user", &r.husk.stdout),
                ("vhost-device-vsock", &r.reference.stdout),
            ],
        );
        println!(
            "  throughput  husk {:.0} MiB/s, reference {:.0} MiB/s; ratio husk / reference {:.2}×",
            r.husk.stdout_mib_s, r.reference.stdout_mib_s, r.throughput_ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}
