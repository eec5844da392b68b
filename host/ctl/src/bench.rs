//! `husk bench boot`: boot time of husk's guest, as a ratio against the same kernel booting a
//! busybox-only initramfs in the same run, on the same back end.
//!
//! Two measures: wall time launch → ready over N interleaved boots (min/median/max), and guest
//! instructions to ready under TCG with `-icount shift=0,sleep=off` (one instruction is one
//! nanosecond of guest time, so the guest's uptime counts instructions; deterministic on a
//! noisy machine). Owns the benchmark procedure; must never be used as a test assertion.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use husk_hypervisor::{artifacts, Hypervisor, VmConfig};
use husk_image::tree::Tree;
use serde::Serialize;

use crate::vm::SHUTDOWN_TIMEOUT;

/// Marker the reference init prints when it is up.
const MARKER: &str = "HUSK-BENCH-READY";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Flags of `husk bench boot`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootBenchArgs {
    /// Boots of each image.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Guest kernel (default: $HUSK_HOME/kernel/vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// husk image (default: $HUSK_HOME/images/default.cpio).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Statically linked busybox for the reference initramfs.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Skip the deterministic instruction-count runs.
    #[arg(long)]
    no_icount: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// The reference initramfs: busybox and a shell `/init` that mounts /proc, prints the marker
/// with its uptime, and leaves.
fn reference_initramfs(busybox: &Path, out: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    husk_image::elf::check_static_x86_64(&data).with_context(|| {
        format!(
            "{} must be a static busybox (apt-get install busybox-static)",
            busybox.display()
        )
    })?;
    let mut t = Tree::default();
    t.file("bin/busybox", 0o755, data);
    t.symlink("bin/sh", "busybox");
    t.dir("proc", 0o755);
    t.char_dev("dev/console", 0o600, 5, 1);
    let init = format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\nread up idle < /proc/uptime\necho \"{MARKER} $up\"\n/bin/busybox reboot -f\n"
    );
    t.file("init", 0o755, init.into_bytes());
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    t.write_cpio(std::io::BufWriter::new(file))?;
    Ok(())
}

struct Sample {
    wall: Duration,
    guest_uptime: Duration,
}

fn boot_husk(hv: &dyn Hypervisor, cfg: &VmConfig) -> anyhow::Result<Sample> {
    let mut vm = hv.boot(cfg)?;
    let r = vm.wait_ready(READY_TIMEOUT)?;
    vm.shutdown(SHUTDOWN_TIMEOUT)?;
    Ok(Sample {
        wall: r.ready,
        guest_uptime: r.guest_uptime,
    })
}

fn boot_reference(hv: &dyn Hypervisor, cfg: &VmConfig) -> anyhow::Result<Sample> {
    let mut vm = hv.boot(cfg)?;
    let line = vm
        .serial()
        .wait_for_line(0, READY_TIMEOUT, |l| l.contains(MARKER))
        .map_err(|e| anyhow::anyhow!("reference guest: {e}: {:?}", vm.serial().last_lines(10)))?;
    let wall = Instant::now().saturating_duration_since(vm.launched_at());
    let secs: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no uptime in {line:?}"))?;
    if vm.wait_exit(SHUTDOWN_TIMEOUT).is_none() {
        bail!("the reference guest did not leave after its marker");
    }
    Ok(Sample {
        wall,
        guest_uptime: Duration::from_secs_f64(secs),
    })
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    pub samples_ms: Vec<f64>,
}

/// Prints min/median/max rows (in ms) under a titled header, aligned.
pub fn print_stats(title: &str, rows: &[(&str, &Stats)]) {
    let w = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .chain([title.chars().count()])
        .max()
        .unwrap_or(0);
    println!(
        "  {title:<w$}  {:>10}  {:>10}  {:>10}",
        "min", "median", "max"
    );
    for (name, s) in rows {
        println!(
            "  {name:<w$}  {:>7.1} ms  {:>7.1} ms  {:>7.1} ms",
            s.min_ms, s.median_ms, s.max_ms
        );
    }
}

pub fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let samples_ms = ms.clone();
    ms.sort_by(f64::total_cmp);
    let median = if ms.is_empty() {
        0.0
    } else if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    Stats {
        min_ms: ms.first().copied().unwrap_or(0.0),
        median_ms: median,
        max_ms: ms.last().copied().unwrap_or(0.0),
        samples_ms,
    }
}

#[derive(Debug, Serialize)]
struct Icount {
    husk_instructions: u64,
    reference_instructions: u64,
    /// The reference reads /proc/uptime, which has 10 ms (10 M instruction) resolution.
    reference_resolution: u64,
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    kernel: PathBuf,
    image: PathBuf,
    runs: usize,
    husk: Stats,
    reference: Stats,
    median_ratio: f64,
    icount: Option<Icount>,
}

/// What every benchmark starts with: the `auto` hypervisor and a scratch directory.
pub struct Setup {
    pub hv: Box<dyn Hypervisor>,
    pub scratch: PathBuf,
}

impl Setup {
    /// Checks `runs`, resolves the hypervisor and creates `<tmp>/husk-<name>-<pid>`.
    pub fn new(name: &str, runs: usize) -> anyhow::Result<Self> {
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let hv = husk_hypervisor::for_host(
            husk_hypervisor::BackendChoice::Auto,
            &husk_hypervisor::HostPaths::system(),
        )?;
        let scratch = std::env::temp_dir().join(format!("husk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        Ok(Self { hv, scratch })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

pub fn boot(args: &BootBenchArgs) -> anyhow::Result<ExitCode> {
    let setup = Setup::new("bench", args.runs)?;
    let kernel = args.kernel.clone().unwrap_or_else(artifacts::kernel);
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| artifacts::image("default"));
    let report = run(args, setup.hv.as_ref(), &kernel, &image, &setup.scratch)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn config(kernel: &Path, initrd: &Path, icount: bool) -> VmConfig {
    let mut c = VmConfig::new(kernel, initrd);
    c.run_root = artifacts::run_root();
    c.log_root = artifacts::log_root();
    c.icount = icount;
    c
}

fn run(
    args: &BootBenchArgs,
    hv: &dyn Hypervisor,
    kernel: &Path,
    image: &Path,
    scratch: &Path,
) -> anyhow::Result<Report> {
    let reference = scratch.join("busybox-reference.cpio");
    reference_initramfs(&args.busybox, &reference)?;
    let (mut husk, mut refs) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        eprintln!("[bench] boot {}/{}", i + 1, args.runs);
        husk.push(
            boot_husk(hv, &config(kernel, image, false))
                .context("husk boot")?
                .wall,
        );
        refs.push(
            boot_reference(hv, &config(kernel, &reference, false))
                .context("reference boot")?
                .wall,
        );
    }
    let icount = if args.no_icount {
        None
    } else {
        eprintln!("[bench] deterministic runs (-icount shift=0,sleep=off)");
        let h = boot_husk(hv, &config(kernel, image, true))
            .context("husk icount boot")?
            .guest_uptime;
        let r = boot_reference(hv, &config(kernel, &reference, true))
            .context("reference icount boot")?
            .guest_uptime;
        Some(Icount {
            husk_instructions: h.as_nanos() as u64,
            reference_instructions: r.as_nanos() as u64,
            reference_resolution: 10_000_000,
            ratio: h.as_secs_f64() / r.as_secs_f64().max(f64::MIN_POSITIVE),
        })
    };
    let husk = stats(&husk);
    let reference_stats = stats(&refs);
    Ok(Report {
        backend: hv.describe(),
        kernel: kernel.into(),
        image: image.into(),
        runs: args.runs,
        median_ratio: husk.median_ms / reference_stats.median_ms.max(f64::MIN_POSITIVE),
        husk,
        reference: reference_stats,
        icount,
    })
}

fn print_report(r: &Report) {
    println!(
        "boot benchmark: {} interleaved boots each; {}",
        r.runs, r.backend
    );
    println!(
        "  kernel {}  image {}",
        r.kernel.display(),
        r.image.display()
    );
    println!();
    print_stats(
        "launch → ready (wall)",
        &[
            ("husk (husk-init, vsock)", &r.husk),
            ("reference (busybox /init)", &r.reference),
        ],
    );
    println!("  ratio husk / reference (median)  {:.2}×", r.median_ratio);
    if let Some(i) = &r.icount {
        println!("\n  guest instructions to ready (-icount shift=0,sleep=off)");
        println!(
            "  {:<26}  {:>7.1} M",
            "husk",
            i.husk_instructions as f64 / 1e6
        );
        println!(
            "  {:<26}  {:>7.1} M (±{} M: /proc/uptime resolution)",
            "reference",
            i.reference_instructions as f64 / 1e6,
            i.reference_resolution / 1_000_000
        );
        println!("  ratio husk / reference           {:.2}×", i.ratio);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_samples() {
        let s = stats(&[
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ]);
        assert_eq!((s.min_ms, s.median_ms, s.max_ms), (1.0, 2.0, 3.0));
        let s = stats(&[Duration::from_millis(1), Duration::from_millis(2)]);
        assert_eq!(s.median_ms, 1.5);
    }
}
