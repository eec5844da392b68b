//! Containers' cgroups (cgroup v2): one cgroup per container at `<root>/husk/<name>`, the OCI
//! `linux.resources` limits written to it, its statistics, freezing, OOM-kill events, killing
//! everything in it, and its removal.
//!
//! Owns the translation from OCI resource values to cgroup2 interface files (validated first,
//! then written; only the fields that are set) and every read of those files, each bounded and
//! parsed defensively. Must never write outside the cgroup directories it names, trust a value
//! read from a file without parsing it, nor block the async runtime: the waits for a file to
//! change are event driven (inotify, whose `IN_MODIFY` kernfs sends for `cgroup.events` and
//! `memory.events`), and only [`Cgroup::remove`] blocks, for at most [`REMOVE_WAIT`].
//!
//! Nothing here needs root to be tested: the code only reads and writes files and makes and
//! removes directories, so the unit tests run against a temporary directory.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Where the guest's cgroup2 hierarchy is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent cgroup of all containers (under the root).
pub const PARENT: &str = "husk";
/// The controllers enabled for containers, each when the parent offers it.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io", "cpuset"];
/// The most read from one interface file.
const MAX_READ: u64 = 64 * 1024;
/// The most read from `cgroup.procs` (about 130 000 pids).
const MAX_PROCS_READ: u64 = 1024 * 1024;
/// How long [`Cgroup::remove`] retries while the cgroup's processes exit.
pub const REMOVE_WAIT: Duration = Duration::from_secs(1);
/// The longest [`Cgroup::remove`] waits for an event before trying again anyway.
const REMOVE_RETRY: Duration = Duration::from_millis(50);
/// The CFS period used when the spec sets a quota but no period (the kernel's default), µs.
const DEFAULT_CPU_PERIOD: u64 = 100_000;
/// The kernel's bounds on the CFS period and the smallest quota, µs.
const CPU_PERIOD_RANGE: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
const MIN_CPU_QUOTA: i64 = 1_000;
/// The cgroup v1 `cpu.shares` range that maps onto `cpu.weight` 1-10000.
const CPU_SHARES_RANGE: std::ops::RangeInclusive<u64> = 2..=262_144;

const PROCS: &str = "cgroup.procs";
const EVENTS: &str = "cgroup.events";
const FREEZE: &str = "cgroup.freeze";
const KILL: &str = "cgroup.kill";
const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
const MEMORY_EVENTS: &str = "memory.events";

/// Why a cgroup operation failed. Each message names the file or directory concerned.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid cgroup name {0:?}: use one path component, not \".\" or \"..\"")]
    BadName(String),
    #[error("cgroup {} already exists", .0.display())]
    AlreadyExists(PathBuf),
    #[error("cgroup {} no longer exists", .0.display())]
    Gone(PathBuf),
    #[error("creating {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("removing {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("reading {}: {source}", .file.display())]
    Read { file: PathBuf, source: io::Error },
    #[error("writing {value:?} to {}: {source}", .file.display())]
    Write {
        file: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("{}: {detail}", .file.display())]
    Parse { file: PathBuf, detail: String },
    #[error("invalid linux.resources.{field} {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("watching {}: {source}", .file.display())]
    Watch { file: PathBuf, source: io::Error },
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
}

/// Statistics of one cgroup. Values of a controller that is not enabled read as zero / `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// `memory.current`, bytes.
    pub memory_current: u64,
    /// `memory.max`, bytes; `None` when unlimited.
    pub memory_max: Option<u64>,
    /// `memory.peak`, bytes (Linux 5.19+).
    pub memory_peak: Option<u64>,
    /// `anon` of `memory.stat`, bytes.
    pub memory_anon: u64,
    /// `file` of `memory.stat`, bytes.
    pub memory_file: u64,
    /// `oom_kill` of `memory.events`.
    pub oom_kills: u64,
    /// `usage_usec` of `cpu.stat`.
    pub cpu_usage_usec: u64,
    /// `user_usec` of `cpu.stat`.
    pub cpu_user_usec: u64,
    /// `system_usec` of `cpu.stat`.
    pub cpu_system_usec: u64,
    /// `nr_throttled` of `cpu.stat`.
    pub cpu_nr_throttled: u64,
    /// `throttled_usec` of `cpu.stat`.
    pub cpu_throttled_usec: u64,
    /// `pids.current`.
    pub pids_current: u64,
    /// `pids.max`; `None` when unlimited.
    pub pids_max: Option<u64>,
}

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<root>/husk/<name>`, first enabling the container controllers (cpu, memory,
    /// pids, io, cpuset) in the root's and `husk`'s `cgroup.subtree_control`, each separately
    /// and only when the parent's `cgroup.controllers` lists it. Fails with
    /// [`CgroupError::AlreadyExists`] when the directory exists.
    pub fn create(root: &Path, name: &str) -> Result<Self, CgroupError> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(CgroupError::BadName(name.to_owned()));
        }
        enable_controllers(root);
        let parent = root.join(PARENT);
        fs::create_dir_all(&parent).map_err(|source| CgroupError::Create {
            path: parent.clone(),
            source,
        })?;
        enable_controllers(&parent);
        let path = parent.join(name);
        match fs::create_dir(&path) {
            Ok(()) => Ok(Self { path }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(CgroupError::AlreadyExists(path))
            }
            Err(source) => Err(CgroupError::Create { path, source }),
        }
    }

    /// The cgroup's directory.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This cgroup's `cgroup.procs`: a process joins the cgroup by writing "0" there.
    pub fn procs_file(&self) -> PathBuf {
        self.file(PROCS)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Applies OCI `linux.resources`: memory (limit, reservation, swap), cpu (shares, quota,
    /// period, cpus, mems) and pids. Every value is validated before anything is written; only
    /// the fields that are set are written. Other fields (devices, blockIO, hugepages, unified,
    /// ...) are not applied.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        for (name, value, optional) in plan(resources)? {
            let file = self.file(name);
            match write_file(&file, &value) {
                Err(CgroupError::Write { source, .. })
                    if optional && source.kind() == io::ErrorKind::NotFound =>
                {
                    tracing::debug!(file = %file.display(), %value, "not written: no such file");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Reads the cgroup's statistics. Files of controllers that are not enabled read as zero.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let single = |name: &str| -> Result<Option<u64>, CgroupError> {
            let file = self.file(name);
            read_bounded(&file, MAX_READ)?
                .map(|text| parse_u64(&file, text.trim()))
                .transpose()
        };
        let limit = |name: &str| -> Result<Option<u64>, CgroupError> {
            let file = self.file(name);
            Ok(read_bounded(&file, MAX_READ)?
                .map(|text| parse_max(&file, text.trim()))
                .transpose()?
                .flatten())
        };
        let keyed = |name: &str, keys: &[&str]| -> Result<Vec<u64>, CgroupError> {
            let file = self.file(name);
            let text = read_bounded(&file, MAX_READ)?.unwrap_or_default();
            keys.iter()
                .map(|key| Ok(keyed_value(&file, &text, key)?.unwrap_or(0)))
                .collect()
        };
        let mem_stat = keyed("memory.stat", &["anon", "file"])?;
        let cpu_stat = keyed(
            "cpu.stat",
            &[
                "usage_usec",
                "user_usec",
                "system_usec",
                "nr_throttled",
                "throttled_usec",
            ],
        )?;
        Ok(Stats {
            memory_current: single("memory.current")?.unwrap_or(0),
            memory_max: limit("memory.max")?,
            memory_peak: single("memory.peak")?,
            memory_anon: mem_stat[0],
            memory_file: mem_stat[1],
            oom_kills: self.oom_kills()?,
            cpu_usage_usec: cpu_stat[0],
            cpu_user_usec: cpu_stat[1],
            cpu_system_usec: cpu_stat[2],
            cpu_nr_throttled: cpu_stat[3],
            cpu_throttled_usec: cpu_stat[4],
            pids_current: single("pids.current")?.unwrap_or(0),
            pids_max: limit("pids.max")?,
        })
    }

    /// The pids in this cgroup (`cgroup.procs`), sorted.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let file = self.procs_file();
        let text = read_bounded(&file, MAX_PROCS_READ)?
            .ok_or_else(|| CgroupError::Gone(self.path.clone()))?;
        let mut pids = text
            .split_whitespace()
            .map(|word| {
                word.parse::<u32>().map_err(|_| CgroupError::Parse {
                    file: file.clone(),
                    detail: format!("{word:?} is not a pid"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        pids.sort_unstable();
        Ok(pids)
    }

    /// Freezes (`true`) or thaws (`false`) the cgroup: writes `cgroup.freeze`, then waits until
    /// `cgroup.events` says `frozen 1` (or `frozen 0`), for at most `timeout`. On a timeout the
    /// request stays written: the caller decides whether to undo it.
    pub async fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let events = self.file(EVENTS);
        // Watch before writing so that the change cannot slip by unseen.
        let watch = AsyncWatch::new(&self.path, &events)?;
        write_file(&self.file(FREEZE), if frozen { "1" } else { "0" })?;
        let wait = async {
            loop {
                if self.frozen_state()? == Some(frozen) {
                    return Ok(());
                }
                watch.changed().await?;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| CgroupError::Timeout {
                what: format!(
                    "{} to say \"frozen {}\"",
                    events.display(),
                    u8::from(frozen)
                ),
                timeout,
            })?
    }

    /// Whether the cgroup is frozen (`frozen 1` in `cgroup.events`).
    #[cfg(test)]
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        self.frozen_state()?.ok_or_else(|| CgroupError::Parse {
            file: self.file(EVENTS),
            detail: "no \"frozen\" key".to_owned(),
        })
    }

    /// The `frozen` key of `cgroup.events`, `None` when it is absent.
    fn frozen_state(&self) -> Result<Option<bool>, CgroupError> {
        let file = self.file(EVENTS);
        let text =
            read_bounded(&file, MAX_READ)?.ok_or_else(|| CgroupError::Gone(self.path.clone()))?;
        match keyed_value(&file, &text, "frozen")? {
            None => Ok(None),
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            Some(other) => Err(CgroupError::Parse {
                file,
                detail: format!("\"frozen {other}\" is neither 0 nor 1"),
            }),
        }
    }

    /// The `oom_kill` count of `memory.events` (0 when the file or the key is missing).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = self.file(MEMORY_EVENTS);
        match read_bounded(&file, MAX_READ)? {
            Some(text) => Ok(keyed_value(&file, &text, "oom_kill")?.unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// Waits until `oom_kill` in `memory.events` exceeds `seen`, and returns the new count.
    /// Event driven; cancel it by dropping the future. Fails with [`CgroupError::Gone`] when
    /// the cgroup is removed, and with [`CgroupError::Watch`] when `memory.events` does not
    /// exist (the memory controller is not enabled).
    pub async fn wait_oom(&self, seen: u64) -> Result<u64, CgroupError> {
        let file = self.file(MEMORY_EVENTS);
        let watch = AsyncWatch::new(&self.path, &file)?;
        loop {
            let text = read_bounded(&file, MAX_READ)?
                .ok_or_else(|| CgroupError::Gone(self.path.clone()))?;
            let count = keyed_value(&file, &text, "oom_kill")?.unwrap_or(0);
            if count > seen {
                return Ok(count);
            }
            watch.changed().await?;
        }
    }

    /// Kills every process in the cgroup: writes "1" to `cgroup.kill` (Linux 5.14+).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        write_file(&self.file(KILL), "1")
    }

    /// Removes the cgroup's directory. While processes are still exiting (`EBUSY`) it retries,
    /// woken by changes to `cgroup.events`, for up to [`REMOVE_WAIT`]; this blocks, so call it
    /// on the blocking pool. A missing directory is fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_WAIT;
        let mut watch: Option<Watches> = None;
        loop {
            let source = match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => e,
            };
            let now = Instant::now();
            if source.raw_os_error() != Some(libc::EBUSY) || now >= deadline {
                return Err(CgroupError::Remove {
                    path: self.path.clone(),
                    source,
                });
            }
            let wait = (deadline - now).min(REMOVE_RETRY);
            match &watch {
                // Armed only now; try again at once so that no change before it is missed.
                None => match Watches::new(&self.path, &self.file(EVENTS)) {
                    Ok(armed) => watch = Some(armed),
                    Err(e) => {
                        tracing::debug!(error = %e, "waiting for the cgroup to empty without events");
                        std::thread::sleep(wait.min(Duration::from_millis(10)));
                    }
                },
                Some(armed) => armed.wait_blocking(wait),
            }
        }
    }
}

/// Enables each of [`CONTROLLERS`] that `dir`'s `cgroup.controllers` lists in its
/// `cgroup.subtree_control`. Best effort: a controller that cannot be enabled is logged.
fn enable_controllers(dir: &Path) {
    let available = dir.join(CGROUP_CONTROLLERS);
    let listed = match read_bounded(&available, MAX_READ) {
        Ok(Some(text)) => text,
        Ok(None) => String::new(),
        Err(e) => {
            tracing::debug!(error = %e, "no controllers enabled");
            return;
        }
    };
    let listed: Vec<&str> = listed.split_whitespace().collect();
    let control = dir.join(SUBTREE_CONTROL);
    for controller in CONTROLLERS {
        if !listed.contains(controller) {
            tracing::debug!(controller, file = %available.display(), "controller not available");
            continue;
        }
        let value = format!("+{controller}");
        // Append, one controller a write: kernfs takes each write as a whole and ignores the
        // offset, and in a test's plain file the writes accumulate.
        let written = OpenOptions::new()
            .append(true)
            .open(&control)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %control.display(), %value, error = %e, "enabling a controller");
        }
    }
}

/// The writes for `resources`, validated: (file, value, skip when the file is missing).
fn plan(resources: &LinuxResources) -> Result<Vec<(&'static str, String, bool)>, CgroupError> {
    let mut writes = Vec::new();
    if let Some(pids) = resources.pids() {
        let limit = pids.limit();
        let value = if limit <= 0 {
            "max".to_owned()
        } else {
            limit.to_string()
        };
        writes.push(("pids.max", value, false));
    }
    if let Some(memory) = resources.memory() {
        plan_memory(memory, &mut writes)?;
    }
    if let Some(cpu) = resources.cpu() {
        plan_cpu(cpu, &mut writes)?;
    }
    let ignored = [
        ("devices", resources.devices().is_some()),
        ("blockIO", resources.block_io().is_some()),
        ("hugepageLimits", resources.hugepage_limits().is_some()),
        ("network", resources.network().is_some()),
        ("rdma", resources.rdma().is_some()),
        ("unified", resources.unified().is_some()),
    ];
    for (field, set) in ignored {
        if set {
            tracing::debug!(field, "linux.resources field not applied");
        }
    }
    Ok(writes)
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> CgroupError {
    CgroupError::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}

/// `-1` as "max", a non-negative count as itself, `0` as unset (as runc does).
fn count_or_max(field: &'static str, value: i64) -> Result<Option<String>, CgroupError> {
    match value {
        -1 => Ok(Some("max".to_owned())),
        0 => Ok(None),
        v if v > 0 => Ok(Some(v.to_string())),
        v => Err(invalid(field, v, "must be -1 (unlimited) or a byte count")),
    }
}

fn plan_memory(
    memory: &LinuxMemory,
    writes: &mut Vec<(&'static str, String, bool)>,
) -> Result<(), CgroupError> {
    let limit = memory.limit();
    let max = limit
        .map(|v| count_or_max("memory.limit", v))
        .transpose()?
        .flatten();
    let low = memory
        .reservation()
        .map(|v| count_or_max("memory.reservation", v))
        .transpose()?
        .flatten();
    let swap = swap_max(memory.swap(), limit)?;
    if let Some(swap) = swap {
        writes.push(("memory.swap.max", swap, true));
    }
    if let Some(max) = max {
        writes.push(("memory.max", max, false));
    }
    if let Some(low) = low {
        writes.push(("memory.low", low, false));
    }
    Ok(())
}

/// cgroup2's `memory.swap.max` from OCI's memory+swap `swap` and memory `limit`, as runc's
/// `ConvertMemorySwapToCgroupV2Value`: swap alone is `swap - limit`.
fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>, CgroupError> {
    let swap_value = swap.unwrap_or(0);
    match swap_value {
        // Unlimited memory with swap unset: both unlimited.
        0 if limit == Some(-1) => Ok(Some("max".to_owned())),
        0 => Ok(None),
        -1 => Ok(Some("max".to_owned())),
        s if s < -1 => Err(invalid(
            "memory.swap",
            s,
            "must be -1 (unlimited) or a byte count",
        )),
        s => match limit {
            Some(l) if l > 0 => {
                if s < l {
                    Err(invalid(
                        "memory.swap",
                        s,
                        "is memory+swap, so must not be below memory.limit",
                    ))
                } else {
                    Ok(Some((s - l).to_string()))
                }
            }
            _ => Err(invalid(
                "memory.swap",
                s,
                "needs a memory.limit (it counts memory+swap)",
            )),
        },
    }
}

/// runc's conversion from cgroup v1 `cpu.shares` (2-262144) to cgroup2 `cpu.weight` (1-10000).
fn shares_to_weight(shares: u64) -> Result<u64, CgroupError> {
    if !CPU_SHARES_RANGE.contains(&shares) {
        return Err(invalid(
            "cpu.shares",
            shares,
            "must be 2-262144 (0 leaves it unset)",
        ));
    }
    Ok(1 + ((shares - 2) * 9999) / 262_142)
}

fn cpu_list(field: &'static str, list: &str) -> Result<Option<String>, CgroupError> {
    let list = list.trim();
    if list.is_empty() {
        return Ok(None);
    }
    if !list
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b'-')
    {
        return Err(invalid(
            field,
            format!("{list:?}"),
            "must be a list such as \"0-3,7\"",
        ));
    }
    Ok(Some(list.to_owned()))
}

fn plan_cpu(
    cpu: &LinuxCpu,
    writes: &mut Vec<(&'static str, String, bool)>,
) -> Result<(), CgroupError> {
    let weight = match cpu.shares() {
        None | Some(0) => None,
        Some(shares) => Some(shares_to_weight(shares)?),
    };
    let quota = match cpu.quota() {
        None | Some(0) => None,
        Some(-1) => Some("max".to_owned()),
        Some(q) if q >= MIN_CPU_QUOTA => Some(q.to_string()),
        Some(q) => {
            return Err(invalid(
                "cpu.quota",
                q,
                "must be -1 (unlimited) or at least 1000 µs",
            ))
        }
    };
    if let Some(period) = cpu.period() {
        if !CPU_PERIOD_RANGE.contains(&period) {
            return Err(invalid("cpu.period", period, "must be 1000-1000000 µs"));
        }
    }
    let cpu_max = match (quota, cpu.period()) {
        (None, None) => None,
        (quota, period) => Some(format!(
            "{} {}",
            quota.unwrap_or_else(|| "max".to_owned()),
            period.unwrap_or(DEFAULT_CPU_PERIOD)
        )),
    };
    let cpus = cpu
        .cpus()
        .as_deref()
        .map(|l| cpu_list("cpu.cpus", l))
        .transpose()?
        .flatten();
    let mems = cpu
        .mems()
        .as_deref()
        .map(|l| cpu_list("cpu.mems", l))
        .transpose()?
        .flatten();
    if let Some(weight) = weight {
        writes.push(("cpu.weight", weight.to_string(), false));
    }
    if let Some(cpu_max) = cpu_max {
        writes.push(("cpu.max", cpu_max, false));
    }
    if let Some(cpus) = cpus {
        writes.push(("cpuset.cpus", cpus, false));
    }
    if let Some(mems) = mems {
        writes.push(("cpuset.mems", mems, false));
    }
    let ignored = [
        ("cpu.idle", cpu.idle().is_some()),
        ("cpu.burst", cpu.burst().is_some()),
        ("cpu.realtimeRuntime", cpu.realtime_runtime().is_some()),
        ("cpu.realtimePeriod", cpu.realtime_period().is_some()),
    ];
    for (field, set) in ignored {
        if set {
            tracing::debug!(field, "linux.resources field not applied");
        }
    }
    Ok(())
}

/// Writes `value` to an existing interface file in one write.
fn write_file(file: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            file: file.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Reads at most `limit` bytes of UTF-8 from `file`; `None` when it does not exist.
fn read_bounded(file: &Path, limit: u64) -> Result<Option<String>, CgroupError> {
    let read_err = |source| CgroupError::Read {
        file: file.to_owned(),
        source,
    };
    let f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(CgroupError::Parse {
            file: file.to_owned(),
            detail: format!("larger than {limit} bytes"),
        });
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CgroupError::Parse {
            file: file.to_owned(),
            detail: "not UTF-8".to_owned(),
        })
}

fn parse_u64(file: &Path, word: &str) -> Result<u64, CgroupError> {
    word.parse().map_err(|_| CgroupError::Parse {
        file: file.to_owned(),
        detail: format!("{word:?} is not a number"),
    })
}

/// A limit: `None` for "max".
fn parse_max(file: &Path, word: &str) -> Result<Option<u64>, CgroupError> {
    if word == "max" {
        Ok(None)
    } else {
        parse_u64(file, word).map(Some)
    }
}

/// The value of `key` in a flat-keyed file ("key value" lines); `None` when absent.
fn keyed_value(file: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(key) {
            continue;
        }
        return match (words.next(), words.next()) {
            (Some(value), None) => parse_u64(file, value).map(Some),
            _ => Err(CgroupError::Parse {
                file: file.to_owned(),
                detail: format!("malformed line {line:?}"),
            }),
        };
    }
    Ok(None)
}

/// What a batch of inotify events means for a wait.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// The watched file changed (or events were lost): check again.
    Changed,
    /// The cgroup was removed.
    Gone,
    /// Nothing that concerns this cgroup.
    Nothing,
}

/// An inotify instance watching one interface file of a cgroup for changes, and the cgroup's
/// parent directory for the cgroup's removal. (kernfs sends `IN_MODIFY` for `cgroup.events`
/// and `memory.events` but nothing on the files when the cgroup is removed; the `rmdir` itself
/// is reported to the parent as `IN_DELETE`.)
#[derive(Debug)]
struct Watches {
    inotify: Inotify,
    cgroup: PathBuf,
    file: PathBuf,
    file_wd: WatchDescriptor,
    parent_wd: Option<WatchDescriptor>,
    name: Option<OsString>,
}

impl Watches {
    fn new(cgroup: &Path, file: &Path) -> Result<Self, CgroupError> {
        let watch_err = |file: &Path, source: nix::Error| {
            if source == nix::Error::ENOENT && !cgroup.exists() {
                CgroupError::Gone(cgroup.to_owned())
            } else {
                CgroupError::Watch {
                    file: file.to_owned(),
                    source: source.into(),
                }
            }
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| watch_err(file, e))?;
        let parent_wd = match cgroup.parent() {
            Some(parent) => Some(
                inotify
                    .add_watch(parent, AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ONLYDIR)
                    .map_err(|e| watch_err(parent, e))?,
            ),
            None => None,
        };
        let file_wd = inotify
            .add_watch(
                file,
                AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF,
            )
            .map_err(|e| watch_err(file, e))?;
        Ok(Self {
            inotify,
            cgroup: cgroup.to_owned(),
            file: file.to_owned(),
            file_wd,
            parent_wd,
            name: cgroup.file_name().map(OsString::from),
        })
    }

    fn classify(&self, events: &[InotifyEvent]) -> Wake {
        let mut wake = Wake::Nothing;
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                wake = Wake::Changed;
            } else if Some(event.wd) == self.parent_wd {
                let parent_gone = event.mask.contains(AddWatchFlags::IN_IGNORED);
                let removed = event.mask.contains(AddWatchFlags::IN_DELETE)
                    && event.name.is_some()
                    && event.name == self.name;
                if parent_gone || removed {
                    return Wake::Gone;
                }
            } else if event.wd == self.file_wd {
                if event.mask.intersects(
                    AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_UNMOUNT,
                ) {
                    return Wake::Gone;
                }
                wake = Wake::Changed;
            }
        }
        wake
    }

    fn watch_error(&self, source: io::Error) -> CgroupError {
        CgroupError::Watch {
            file: self.file.clone(),
            source,
        }
    }

    /// Blocks until the file changes or `timeout` passes (best effort: errors just end it).
    fn wait_blocking(&self, timeout: Duration) {
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        if let Ok(ready) = nix::poll::poll(&mut fds, PollTimeout::from(millis)) {
            if ready > 0 {
                // Drain; what changed does not matter, the caller tries again.
                let _ = self.inotify.read_events();
            }
        }
    }
}

/// `AsyncFd` needs `AsRawFd`, which nix's `Inotify` has only as `AsFd`.
#[derive(Debug)]
struct InotifyFd(Watches);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.inotify.as_fd().as_raw_fd()
    }
}

/// [`Watches`] on the tokio reactor.
#[derive(Debug)]
struct AsyncWatch {
    fd: AsyncFd<InotifyFd>,
}

impl AsyncWatch {
    fn new(cgroup: &Path, file: &Path) -> Result<Self, CgroupError> {
        let watches = Watches::new(cgroup, file)?;
        let file = watches.file.clone();
        // SAFETY: the descriptor is the inotify instance's `OwnedFd`, owned by the `InotifyFd`
        // that the `AsyncFd` owns and never hands out mutably, so it stays open and the same
        // for the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register_with_interest(InotifyFd(watches), Interest::READABLE) }
            .map_err(|e| CgroupError::Watch {
                file,
                source: e.into(),
            })?;
        Ok(Self { fd })
    }

    /// Waits for the next change of the file; [`CgroupError::Gone`] when the cgroup goes.
    async fn changed(&self) -> Result<(), CgroupError> {
        let watches = &self.fd.get_ref().0;
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| watches.watch_error(e))?;
            let events = match guard.try_io(|fd| {
                fd.get_ref()
                    .0
                    .inotify
                    .read_events()
                    .map_err(io::Error::from)
            }) {
                Ok(read) => read.map_err(|e| watches.watch_error(e))?,
                Err(_would_block) => continue,
            };
            match watches.classify(&events) {
                Wake::Changed => return Ok(()),
                Wake::Gone => return Err(CgroupError::Gone(watches.cgroup.clone())),
                Wake::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPids};
    use tempfile::TempDir;

    /// Files a fresh cgroup directory has, for the code under test to write.
    const INTERFACE_FILES: &[&str] = &[
        "cgroup.procs",
        "cgroup.freeze",
        "cgroup.kill",
        "memory.max",
        "memory.low",
        "memory.swap.max",
        "cpu.weight",
        "cpu.max",
        "cpuset.cpus",
        "cpuset.mems",
        "pids.max",
    ];
    const UNTOUCHED: &str = "untouched";

    /// A fake cgroup root offering `controllers`, and a created cgroup "c1" with the
    /// interface files pre-created.
    fn setup(controllers: &str) -> (TempDir, Cgroup) {
        let root = tempfile::tempdir().expect("temp dir");
        write(&root.path().join(CGROUP_CONTROLLERS), controllers);
        write(&root.path().join(SUBTREE_CONTROL), "");
        let cg = Cgroup::create(root.path(), "c1").expect("create");
        for name in INTERFACE_FILES {
            write(&cg.file(name), UNTOUCHED);
        }
        write(&cg.file(EVENTS), "populated 1\nfrozen 0\n");
        (root, cg)
    }

    fn write(path: &Path, text: &str) {
        fs::write(path, text).expect("write fixture");
    }

    fn read(cg: &Cgroup, name: &str) -> String {
        fs::read_to_string(cg.file(name)).expect("read back")
    }

    fn resources(memory: Option<LinuxMemory>, cpu: Option<LinuxCpu>) -> LinuxResources {
        let mut r = LinuxResources::default();
        r.set_memory(memory);
        r.set_cpu(cpu);
        r
    }

    fn pids(limit: i64) -> LinuxResources {
        let mut p = LinuxPids::default();
        p.set_limit(limit);
        let mut r = LinuxResources::default();
        r.set_pids(Some(p));
        r
    }

    fn memory(limit: Option<i64>, swap: Option<i64>) -> LinuxResources {
        let mut m = LinuxMemory::default();
        m.set_limit(limit);
        m.set_swap(swap);
        resources(Some(m), None)
    }

    fn cpu(shares: Option<u64>, quota: Option<i64>, period: Option<u64>) -> LinuxResources {
        let mut c = LinuxCpu::default();
        c.set_shares(shares);
        c.set_quota(quota);
        c.set_period(period);
        resources(None, Some(c))
    }

    fn invalid_field(err: CgroupError) -> &'static str {
        match err {
            CgroupError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn create_enables_only_listed_controllers() {
        let root = tempfile::tempdir().unwrap();
        write(
            &root.path().join(CGROUP_CONTROLLERS),
            "cpuset cpu io memory pids rdma\n",
        );
        write(&root.path().join(SUBTREE_CONTROL), "");
        let parent = root.path().join(PARENT);
        fs::create_dir(&parent).unwrap();
        write(&parent.join(CGROUP_CONTROLLERS), "memory pids\n");
        write(&parent.join(SUBTREE_CONTROL), "");
        let cg = Cgroup::create(root.path(), "c1").unwrap();
        assert_eq!(cg.path(), parent.join("c1"));
        assert!(cg.path().is_dir());
        assert_eq!(cg.procs_file(), parent.join("c1/cgroup.procs"));
        let read = |p: &Path| fs::read_to_string(p.join(SUBTREE_CONTROL)).unwrap();
        assert_eq!(read(root.path()), "+cpu+memory+pids+io+cpuset");
        assert_eq!(read(&parent), "+memory+pids");
    }

    #[test]
    fn create_without_controller_files_still_creates() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(root.path(), "c1").unwrap();
        assert!(cg.path().is_dir());
        assert!(!root.path().join(SUBTREE_CONTROL).exists());
    }

    #[test]
    fn create_refuses_bad_names_and_an_existing_cgroup() {
        let root = tempfile::tempdir().unwrap();
        for name in ["..", ".", "a/b", "", "/abs", "a\0b"] {
            let err = Cgroup::create(root.path(), name).unwrap_err();
            assert!(matches!(err, CgroupError::BadName(_)), "{name:?}: {err:?}");
        }
        Cgroup::create(root.path(), "c1").unwrap();
        let err = Cgroup::create(root.path(), "c1").unwrap_err();
        assert!(matches!(err, CgroupError::AlreadyExists(ref p) if p.ends_with("husk/c1")));
        assert!(err.to_string().contains("husk/c1"), "{err}");
    }

    #[test]
    fn apply_writes_the_expected_values() {
        let (_root, cg) = setup("");
        let mut r = resources(
            Some(
                LinuxMemoryBuilder::default()
                    .limit(512 * 1024 * 1024_i64)
                    .reservation(256 * 1024 * 1024_i64)
                    .swap(768 * 1024 * 1024_i64)
                    .build()
                    .unwrap(),
            ),
            Some(
                LinuxCpuBuilder::default()
                    .shares(1024_u64)
                    .quota(50_000_i64)
                    .period(200_000_u64)
                    .cpus("0-1,3")
                    .mems("0")
                    .build()
                    .unwrap(),
            ),
        );
        let mut p = LinuxPids::default();
        p.set_limit(100);
        r.set_pids(Some(p));
        cg.apply(&r).unwrap();
        assert_eq!(read(&cg, "memory.max"), "536870912");
        assert_eq!(read(&cg, "memory.low"), "268435456");
        assert_eq!(read(&cg, "memory.swap.max"), "268435456");
        assert_eq!(read(&cg, "cpu.weight"), "39");
        assert_eq!(read(&cg, "cpu.max"), "50000 200000");
        assert_eq!(read(&cg, "cpuset.cpus"), "0-1,3");
        assert_eq!(read(&cg, "cpuset.mems"), "0");
        assert_eq!(read(&cg, "pids.max"), "100");
    }

    #[test]
    fn apply_max_and_default_cases() {
        let (_root, cg) = setup("");
        cg.apply(&memory(Some(-1), None)).unwrap();
        assert_eq!(read(&cg, "memory.max"), "max");
        assert_eq!(read(&cg, "memory.swap.max"), "max");
        cg.apply(&memory(Some(1 << 30), Some(-1))).unwrap();
        assert_eq!(read(&cg, "memory.max"), "1073741824");
        assert_eq!(read(&cg, "memory.swap.max"), "max");
        cg.apply(&memory(Some(1 << 30), Some(1 << 30))).unwrap();
        assert_eq!(read(&cg, "memory.swap.max"), "0");
        cg.apply(&cpu(None, Some(-1), None)).unwrap();
        assert_eq!(read(&cg, "cpu.max"), "max 100000");
        cg.apply(&cpu(None, Some(25_000), None)).unwrap();
        assert_eq!(read(&cg, "cpu.max"), "25000 100000");
        cg.apply(&cpu(None, None, Some(50_000))).unwrap();
        assert_eq!(read(&cg, "cpu.max"), "max 50000");
        cg.apply(&pids(0)).unwrap();
        assert_eq!(read(&cg, "pids.max"), "max");
        cg.apply(&pids(-1)).unwrap();
        assert_eq!(read(&cg, "pids.max"), "max");
    }

    #[test]
    fn apply_writes_only_the_fields_that_are_set() {
        let (_root, cg) = setup("");
        cg.apply(&memory(Some(4096), None)).unwrap();
        assert_eq!(read(&cg, "memory.max"), "4096");
        cg.apply(&cpu(Some(0), Some(0), None)).unwrap();
        cg.apply(&LinuxResources::default()).unwrap();
        for name in INTERFACE_FILES.iter().filter(|n| **n != "memory.max") {
            assert_eq!(read(&cg, name), UNTOUCHED, "{name}");
        }
    }

    #[test]
    fn shares_convert_to_weight_as_runc_does() {
        assert_eq!(shares_to_weight(2).unwrap(), 1);
        assert_eq!(shares_to_weight(1024).unwrap(), 39);
        assert_eq!(shares_to_weight(262_144).unwrap(), 10_000);
        assert_eq!(
            invalid_field(shares_to_weight(1).unwrap_err()),
            "cpu.shares"
        );
        assert_eq!(
            invalid_field(shares_to_weight(262_145).unwrap_err()),
            "cpu.shares"
        );
    }

    #[test]
    fn apply_refuses_invalid_values_naming_the_field_and_writes_nothing() {
        let (_root, cg) = setup("");
        let cases = [
            (memory(Some(-2), None), "memory.limit", "-2"),
            (memory(Some(100), Some(50)), "memory.swap", "50"),
            (memory(None, Some(4096)), "memory.swap", "4096"),
            (memory(Some(4096), Some(-7)), "memory.swap", "-7"),
            (cpu(None, Some(-5), None), "cpu.quota", "-5"),
            (cpu(None, Some(10), None), "cpu.quota", "10"),
            (cpu(None, Some(50_000), Some(0)), "cpu.period", "0"),
            (cpu(None, None, Some(2_000_000)), "cpu.period", "2000000"),
            (cpu(Some(1), None, None), "cpu.shares", "1"),
            (cpu(Some(300_000), None, None), "cpu.shares", "300000"),
        ];
        for (mut r, field, value) in cases {
            // A valid pids limit alongside: nothing may be written when anything is invalid.
            let mut p = LinuxPids::default();
            p.set_limit(10);
            r.set_pids(Some(p));
            let err = cg.apply(&r).unwrap_err();
            let message = err.to_string();
            assert_eq!(invalid_field(err), field);
            assert!(
                message.contains(field) && message.contains(value),
                "{message}"
            );
        }
        let mut c = LinuxCpu::default();
        c.set_cpus(Some("0-3\nmax".to_owned()));
        let err = cg.apply(&resources(None, Some(c))).unwrap_err();
        assert_eq!(invalid_field(err), "cpu.cpus");
        for name in INTERFACE_FILES {
            assert_eq!(read(&cg, name), UNTOUCHED, "{name}");
        }
    }

    #[test]
    fn apply_skips_a_missing_swap_file_but_not_other_files() {
        let (_root, cg) = setup("");
        fs::remove_file(cg.file("memory.swap.max")).unwrap();
        cg.apply(&memory(Some(4096), Some(8192))).unwrap();
        assert_eq!(read(&cg, "memory.max"), "4096");
        fs::remove_file(cg.file("pids.max")).unwrap();
        let err = cg.apply(&pids(5)).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Write { file, value, source }
                if file.ends_with("pids.max") && value == "5"
                    && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("pids.max"), "{err}");
    }

    #[test]
    fn stats_are_parsed_from_the_files() {
        let (_root, cg) = setup("");
        write(&cg.file("memory.current"), "123456\n");
        write(&cg.file("memory.max"), "1073741824\n");
        write(&cg.file("memory.peak"), "234567\n");
        write(
            &cg.file("memory.stat"),
            "anon 1000\nfile 2000\nkernel 300\nanon_thp 0\nworkingset_refault_anon 0\n",
        );
        write(
            &cg.file(MEMORY_EVENTS),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
        );
        write(
            &cg.file("cpu.stat"),
            "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\n\
             nr_throttled 3\nthrottled_usec 700\nnr_bursts 0\nburst_usec 0\n",
        );
        write(&cg.file("pids.current"), "7\n");
        write(&cg.file("pids.max"), "max\n");
        assert_eq!(
            cg.stats().unwrap(),
            Stats {
                memory_current: 123_456,
                memory_max: Some(1_073_741_824),
                memory_peak: Some(234_567),
                memory_anon: 1000,
                memory_file: 2000,
                oom_kills: 2,
                cpu_usage_usec: 5000,
                cpu_user_usec: 3000,
                cpu_system_usec: 2000,
                cpu_nr_throttled: 3,
                cpu_throttled_usec: 700,
                pids_current: 7,
                pids_max: None,
            }
        );
        write(&cg.file("memory.max"), "max\n");
        write(&cg.file("pids.max"), "64\n");
        let stats = cg.stats().unwrap();
        assert_eq!((stats.memory_max, stats.pids_max), (None, Some(64)));
    }

    #[test]
    fn missing_stat_files_read_as_zero() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(root.path(), "c1").unwrap();
        assert_eq!(cg.stats().unwrap(), Stats::default());
        assert_eq!(cg.oom_kills().unwrap(), 0);
        write(&cg.file(MEMORY_EVENTS), "oom 0\n");
        assert_eq!(cg.oom_kills().unwrap(), 0);
    }

    #[test]
    fn malformed_stat_files_are_parse_errors_naming_the_file() {
        let cases = [
            ("memory.current", "12ab\n"),
            ("memory.max", "lots\n"),
            ("cpu.stat", "usage_usec -5\n"),
            ("memory.stat", "anon\n"),
            ("memory.stat", "file 1 2\n"),
            (MEMORY_EVENTS, "oom_kill many\n"),
            ("pids.max", "\n"),
        ];
        for (name, text) in cases {
            let root = tempfile::tempdir().unwrap();
            let cg = Cgroup::create(root.path(), "c1").unwrap();
            write(&cg.file(name), text);
            let err = cg.stats().unwrap_err();
            assert!(
                matches!(&err, CgroupError::Parse { file, .. } if file.ends_with(name)),
                "{name}: {err:?}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn reads_are_bounded() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(root.path(), "c1").unwrap();
        write(&cg.file("memory.stat"), &"x 1\n".repeat(20_000));
        let err = cg.stats().unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn pids_are_sorted() {
        let (_root, cg) = setup("");
        write(&cg.procs_file(), "42\n7\n1000\n8\n");
        assert_eq!(cg.pids().unwrap(), vec![7, 8, 42, 1000]);
        write(&cg.procs_file(), "");
        assert_eq!(cg.pids().unwrap(), Vec::<u32>::new());
        write(&cg.procs_file(), "1\nx\n");
        let err = cg.pids().unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{err:?}");
        fs::remove_file(cg.procs_file()).unwrap();
        assert!(matches!(cg.pids().unwrap_err(), CgroupError::Gone(_)));
    }

    #[test]
    fn kill_all_writes_cgroup_kill() {
        let (_root, cg) = setup("");
        cg.kill_all().unwrap();
        assert_eq!(read(&cg, KILL), "1");
    }

    #[test]
    fn is_frozen_reads_cgroup_events() {
        let (_root, cg) = setup("");
        assert!(!cg.is_frozen().unwrap());
        write(&cg.file(EVENTS), "populated 1\nfrozen 1\n");
        assert!(cg.is_frozen().unwrap());
        write(&cg.file(EVENTS), "populated 1\n");
        assert!(matches!(cg.is_frozen(), Err(CgroupError::Parse { .. })));
        write(&cg.file(EVENTS), "frozen 2\n");
        assert!(matches!(cg.is_frozen(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn remove_of_a_missing_or_empty_directory_is_ok() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(root.path(), "c1").unwrap();
        cg.remove().unwrap();
        assert!(!cg.path().exists());
        cg.remove().unwrap();
    }

    #[test]
    fn remove_reports_other_errors_at_once() {
        // A plain directory with files in it: ENOTEMPTY, not a reason to wait.
        let (_root, cg) = setup("");
        let start = Instant::now();
        let err = cg.remove().unwrap_err();
        assert!(matches!(err, CgroupError::Remove { .. }), "{err:?}");
        assert!(start.elapsed() < REMOVE_WAIT);
    }

    #[tokio::test]
    async fn set_frozen_waits_for_cgroup_events() {
        let (_root, cg) = setup("");
        let events = cg.file(EVENTS);
        let writer = tokio::spawn(async move {
            // One thread: yielding lets the waiter arm before the change.
            tokio::task::yield_now().await;
            fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
            // One thread: yielding lets the waiter arm before the change.
            tokio::task::yield_now().await;
            fs::write(&events, "populated 1\nfrozen 1\n").unwrap();
        });
        cg.set_frozen(true, Duration::from_secs(10)).await.unwrap();
        writer.await.unwrap();
        assert_eq!(read(&cg, FREEZE), "1");
        assert!(cg.is_frozen().unwrap());
    }

    #[tokio::test]
    async fn set_frozen_returns_at_once_when_already_there_and_times_out_otherwise() {
        let (_root, cg) = setup("");
        cg.set_frozen(false, Duration::from_secs(10)).await.unwrap();
        assert_eq!(read(&cg, FREEZE), "0");
        let err = cg
            .set_frozen(true, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, CgroupError::Timeout { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("cgroup.events") && message.contains("frozen 1"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn wait_oom_returns_when_oom_kill_grows() {
        let (_root, cg) = setup("");
        let file = cg.file(MEMORY_EVENTS);
        write(&file, "oom 1\noom_kill 1\n");
        let writer = tokio::spawn(async move {
            // One thread: yielding lets the waiter arm before the change.
            tokio::task::yield_now().await;
            // A change that is not an OOM kill: still waiting.
            fs::write(&file, "max 3\noom 1\noom_kill 1\n").unwrap();
            // One thread: yielding lets the waiter arm before the change.
            tokio::task::yield_now().await;
            fs::write(&file, "max 3\noom 2\noom_kill 2\n").unwrap();
        });
        let count = tokio::time::timeout(Duration::from_secs(10), cg.wait_oom(1))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(count, 2);
        // Already past `seen`: at once.
        assert_eq!(cg.wait_oom(0).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn wait_oom_fails_when_the_cgroup_goes() {
        let (_root, cg) = setup("");
        write(&cg.file(MEMORY_EVENTS), "oom_kill 0\n");
        let path = cg.path().to_owned();
        let remover = tokio::spawn(async move {
            // One thread: yielding lets the waiter arm before the change.
            tokio::task::yield_now().await;
            fs::remove_dir_all(path).unwrap();
        });
        let err = tokio::time::timeout(Duration::from_secs(10), cg.wait_oom(0))
            .await
            .unwrap()
            .unwrap_err();
        remover.await.unwrap();
        assert!(matches!(err, CgroupError::Gone(_)), "{err:?}");
        // And when it was gone before the wait began.
        assert!(matches!(cg.wait_oom(0).await, Err(CgroupError::Gone(_))));
    }

    #[tokio::test]
    async fn wait_oom_without_memory_events_is_a_watch_error() {
        let (_root, cg) = setup("");
        let err = cg.wait_oom(0).await.unwrap_err();
        assert!(matches!(err, CgroupError::Watch { .. }), "{err:?}");
        assert!(err.to_string().contains(MEMORY_EVENTS), "{err}");
    }

    #[test]
    fn watches_ignore_siblings_and_report_changes_and_removal() {
        let (_root, cg) = setup("");
        let watches = Watches::new(cg.path(), &cg.file(EVENTS)).unwrap();
        // A sibling's removal is not ours.
        let sibling = cg.path().with_file_name("c2");
        fs::create_dir(&sibling).unwrap();
        fs::remove_dir(&sibling).unwrap();
        let events = watches.inotify.read_events().unwrap();
        assert_eq!(watches.classify(&events), Wake::Nothing);
        write(&cg.file(EVENTS), "frozen 1\n");
        let events = watches.inotify.read_events().unwrap();
        assert_eq!(watches.classify(&events), Wake::Changed);
        fs::remove_dir_all(cg.path()).unwrap();
        let events = watches.inotify.read_events().unwrap();
        assert_eq!(watches.classify(&events), Wake::Gone);
    }
}
