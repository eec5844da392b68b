//! Containers' cgroups (cgroup v2): one cgroup per container at `<root>/husk/<name>`, the OCI
//! `linux.resources` limits written to it, its statistics, freezing, OOM-kill events, killing
//! everything in it, and its removal.
//!
//! Owns the container cgroups' life and every write to them. The limits go through cgroups-rs
//! (0.3, v2 mode): its controllers write `pids.max`, `memory.max`/`low`/`swap.max`,
//! `cpu.weight`, `cpu.max`, `cpuset.cpus`/`mems`, `io.bfq.weight` and `io.max`, freeze and thaw
//! through `cgroup.freeze`, and its `Cgroup` kills (`cgroup.kill`) and removes the directory.
//! The rest stays direct, each for a reason:
//! - [`plan`]: what to write is validated first, whole, by husk (cgroups-rs checks nothing, and
//!   its `Cgroup::apply` ignores write errors), so it calls the controllers' setters one by one.
//! - creation: cgroups-rs's v2 `create` reads the controller list from a fixed
//!   `/sys/fs/cgroup`, writes every controller at every level and takes an existing directory
//!   as success; husk enables its five controllers per level, each where that level offers it,
//!   and refuses to share a cgroup ([`CgroupError::AlreadyExists`]).
//! - statistics, `cgroup.procs`, `cgroup.events`, `memory.events` and `io.weight` ([`files`]):
//!   cgroups-rs's v2 statistics panic on a missing file (`memory.high`, `memory.swap.events`)
//!   or a device minor above 32767 (`io.stat`), turn parse errors into zeros and read without
//!   bound, and it writes blkio weights only to `io.bfq.weight`; husk reads every file bounded
//!   and parses it defensively.
//! - the waits ([`watch`]): event driven (inotify on `cgroup.events` and `memory.events`);
//!   cgroups-rs's OOM notifier is cgroup v1's `cgroup.event_control`.
//!
//! cgroups-rs's own v2 hierarchy is fixed at `/sys/fs/cgroup` (and `hierarchies::auto` checks
//! its cgroup2 magic; nothing reads `/proc/self/mountinfo` in v2 mode), so husk gives it
//! [`Hierarchy`], a v2 hierarchy rooted anywhere. That is how the unit tests run without root,
//! against a temporary directory, through the real cgroups-rs code (no fake is needed): the
//! files are plain files there. cgroups-rs opens files to write with `File::create`, which
//! would make a missing file in a plain directory where kernfs refuses, so every write first
//! checks that the file exists and fails with `NotFound` otherwise, the same on both.
//!
//! Must never write outside the cgroup directories it names, create an interface file, trust a
//! value read from a file without parsing it, nor block the async runtime: only
//! [`Cgroup::remove`] blocks, for at most [`REMOVE_WAIT`]. Never clone a `cgroups_rs::Cgroup`:
//! its `Clone` replaces the hierarchy with `hierarchies::auto()`, the machine's own
//! `/sys/fs/cgroup`; one is loaded per operation instead.

mod files;
mod plan;
mod watch;

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::blkio::BlkIoController;
use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::error::ErrorKind as RsErrorKind;
use cgroups_rs::freezer::FreezerController;
use cgroups_rs::memory::{MemController, SetMemory};
use cgroups_rs::pid::PidController;
use cgroups_rs::{ControllIdentifier, Controller, MaxValue, Subsystem};
use oci_spec::runtime::LinuxResources;

use files::{keyed_value, nested_sums, parse_max, parse_u64, read_bounded, write_file};
use plan::{blkio_to_io_weight, Setting};
use watch::{AsyncWatch, Watches};

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

const PROCS: &str = "cgroup.procs";
const EVENTS: &str = "cgroup.events";
const FREEZE: &str = "cgroup.freeze";
const KILL: &str = "cgroup.kill";
const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
const MEMORY_EVENTS: &str = "memory.events";
const IO_WEIGHT: &str = "io.weight";
const IO_BFQ_WEIGHT: &str = "io.bfq.weight";
const IO_STAT: &str = "io.stat";

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
    /// `rbytes` of `io.stat`, summed over the devices.
    pub io_read_bytes: u64,
    /// `wbytes` of `io.stat`, summed over the devices.
    pub io_write_bytes: u64,
    /// `rios` of `io.stat`, summed over the devices.
    pub io_read_ios: u64,
    /// `wios` of `io.stat`, summed over the devices.
    pub io_write_ios: u64,
}

/// cgroups-rs's view of a cgroup2 hierarchy mounted at `root` (its own `hierarchies::V2` is
/// fixed at `/sys/fs/cgroup`). Every v2 controller cgroups-rs has is listed: each is only a
/// directory to read and write files in, and one whose files are missing fails when used.
#[derive(Debug, Clone)]
struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    /// The cgroup at `relative` (UTF-8, as cgroups-rs requires) under this root.
    fn load(&self, relative: &str) -> cgroups_rs::Cgroup {
        cgroups_rs::Cgroup::load(Box::new(self.clone()), relative)
    }
}

impl cgroups_rs::Hierarchy for Hierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        let root = || self.root.clone();
        vec![
            Subsystem::Pid(PidController::new(root(), true)),
            Subsystem::Mem(MemController::new(root(), true)),
            Subsystem::Cpu(CpuController::new(root(), true)),
            Subsystem::CpuSet(CpuSetController::new(root(), true)),
            Subsystem::BlkIo(BlkIoController::new(root(), true)),
            // The freezer is core in v2 (`cgroup.freeze`), not a controller.
            Subsystem::Freezer(FreezerController::new(root(), true)),
        ]
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn root_control_group(&self) -> cgroups_rs::Cgroup {
        self.load("")
    }

    fn parent_control_group(&self, path: &str) -> cgroups_rs::Cgroup {
        let parent = Path::new(path).parent().and_then(Path::to_str);
        self.load(parent.unwrap_or(""))
    }

    fn v2(&self) -> bool {
        true
    }
}

/// The `std::io::Error` inside a cgroups-rs error, copied (it is only lent).
fn rs_io_error(e: &cgroups_rs::error::Error) -> Option<io::Error> {
    let source = std::error::Error::source(e)?.downcast_ref::<io::Error>()?;
    Some(match source.raw_os_error() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::new(source.kind(), source.to_string()),
    })
}

/// A cgroups-rs error from writing `value` to `file` (possibly after reading it, as for
/// `cpu.max`) as husk's, naming the file.
fn rs_error(file: &Path, value: &str, e: cgroups_rs::error::Error) -> CgroupError {
    let file = file.to_owned();
    match (e.kind(), rs_io_error(&e)) {
        (RsErrorKind::ReadFailed(_), Some(source)) => CgroupError::Read { file, source },
        (RsErrorKind::ParseError | RsErrorKind::Common(_), _) => CgroupError::Parse {
            file,
            detail: e.to_string(),
        },
        (_, source) => CgroupError::Write {
            file,
            value: value.to_owned(),
            source: source.unwrap_or_else(|| io::Error::other(e.to_string())),
        },
    }
}

/// Runs `write`, a cgroups-rs write of `value` to `file`, once `file` is known to exist:
/// cgroups-rs opens with `File::create`, which would make a missing file in a plain directory
/// (kernfs refuses with `EACCES`), so a missing file is `NotFound` here, the same on both.
fn write_existing(
    file: &Path,
    value: &str,
    write: impl FnOnce() -> cgroups_rs::error::Result<()>,
) -> Result<(), CgroupError> {
    if let Err(source) = fs::symlink_metadata(file) {
        return Err(CgroupError::Write {
            file: file.to_owned(),
            value: value.to_owned(),
            source,
        });
    }
    write().map_err(|e| rs_error(file, value, e))
}

/// The controller `T` of `cg`. Never missing ([`Hierarchy`] lists them all), but if it were,
/// writing `value` to `file` fails rather than panics.
fn controller<'a, T>(
    cg: &'a cgroups_rs::Cgroup,
    file: &Path,
    value: &str,
) -> Result<&'a T, CgroupError>
where
    &'a T: From<&'a Subsystem>,
    T: Controller + ControllIdentifier,
{
    cg.controller_of::<T>().ok_or_else(|| CgroupError::Write {
        file: file.to_owned(),
        value: value.to_owned(),
        source: io::Error::new(
            io::ErrorKind::Unsupported,
            format!("cgroups-rs has no {} controller here", T::controller_type()),
        ),
    })
}

/// What the cgroup's `io.bfq.weight` offers (read once, before anything is written).
#[derive(Debug, Clone, Copy, Default)]
struct Bfq {
    /// The file exists: the BFQ scheduler takes blkio weights as they are.
    weight: bool,
    /// It takes per-device weights too (its first line is "default N", not a lone number).
    devices: bool,
}

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The hierarchy's root.
    root: PathBuf,
    /// The cgroup below the root: "husk/<name>".
    relative: String,
    /// `root` joined with `relative`.
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<root>/husk/<name>`, first enabling the container controllers (cpu, memory,
    /// pids, io, cpuset) in the root's and `husk`'s `cgroup.subtree_control`, each separately
    /// and only when the parent's `cgroup.controllers` lists it. Fails with
    /// [`CgroupError::AlreadyExists`] when the directory exists.
    pub fn create(root: &Path, name: &str) -> Result<Self, CgroupError> {
        let _span =
            husk_telemetry::child_span!("jail.cgroup", otel.name = "jail cgroup", cgroup = name)
                .entered();
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
            Ok(()) => Ok(Self {
                root: root.to_owned(),
                relative: format!("{PARENT}/{name}"),
                path,
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(CgroupError::AlreadyExists(path))
            }
            Err(source) => Err(CgroupError::Create { path, source }),
        }
    }

    /// The cgroup's directory.
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

    /// The cgroup as cgroups-rs sees it (loaded anew each time: see the module's header).
    fn rs(&self) -> cgroups_rs::Cgroup {
        Hierarchy {
            root: self.root.clone(),
        }
        .load(&self.relative)
    }

    /// Applies OCI `linux.resources`: memory (limit, reservation, swap), cpu (shares, quota,
    /// period, cpus, mems), pids and blockIO (weight, per-device weights, throttles). Every
    /// value is validated before anything is written; only the fields that are set are
    /// written. Other fields (devices, hugepages, unified, ...) are not applied.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        let _span = husk_telemetry::child_span!("jail.limits", otel.name = "jail limits").entered();
        let settings = plan::plan(resources)?;
        let bfq = if settings
            .iter()
            .any(|s| matches!(s, Setting::IoWeight(_) | Setting::IoDeviceWeight { .. }))
        {
            self.bfq()?
        } else {
            Bfq::default()
        };
        let cg = self.rs();
        for setting in &settings {
            self.write(&cg, bfq, setting)?;
        }
        Ok(())
    }

    /// Reads what `io.bfq.weight` offers.
    fn bfq(&self) -> Result<Bfq, CgroupError> {
        Ok(match read_bounded(&self.file(IO_BFQ_WEIGHT), MAX_READ)? {
            None => Bfq::default(),
            Some(text) => Bfq {
                weight: true,
                devices: text.trim().parse::<u64>().is_err(),
            },
        })
    }

    /// Writes one setting through its cgroups-rs controller.
    fn write(
        &self,
        cg: &cgroups_rs::Cgroup,
        bfq: Bfq,
        setting: &Setting,
    ) -> Result<(), CgroupError> {
        let file = self.file(setting.file());
        let value = setting.value();
        match setting {
            Setting::PidsMax(v) => {
                let pids: &PidController = controller(cg, &file, &value)?;
                write_existing(&file, &value, || pids.set_pid_max(*v))
            }
            Setting::SwapMax(v) => {
                if !file.exists() {
                    // No swap accounting in this kernel: nothing to limit.
                    tracing::debug!(file = %file.display(), %value, "not written: no such file");
                    return Ok(());
                }
                let memory: &MemController = controller(cg, &file, &value)?;
                let limit = match v {
                    MaxValue::Max => -1,
                    MaxValue::Value(n) => *n,
                };
                write_existing(&file, &value, || memory.set_memswap_limit(limit))
            }
            Setting::MemoryMax(v) => {
                let memory: &MemController = controller(cg, &file, &value)?;
                let set = SetMemory {
                    max: Some(*v),
                    ..SetMemory::default()
                };
                write_existing(&file, &value, || memory.set_mem(set))
            }
            Setting::MemoryLow(v) => {
                let memory: &MemController = controller(cg, &file, &value)?;
                let set = SetMemory {
                    low: Some(*v),
                    ..SetMemory::default()
                };
                write_existing(&file, &value, || memory.set_mem(set))
            }
            Setting::CpuWeight(weight) => {
                let cpu: &CpuController = controller(cg, &file, &value)?;
                // cgroups-rs's v2 `set_shares` writes `cpu.weight` as given (converted by plan).
                write_existing(&file, &value, || cpu.set_shares(*weight))
            }
            Setting::CpuMax { quota, period } => {
                let cpu: &CpuController = controller(cg, &file, &value)?;
                // Both halves always given; cgroups-rs writes a quota of -1 as "max".
                write_existing(&file, &value, || {
                    cpu.set_cfs_quota_and_period(Some(quota.unwrap_or(-1)), Some(*period))
                })
            }
            Setting::CpusetCpus(list) => {
                let cpuset: &CpuSetController = controller(cg, &file, &value)?;
                write_existing(&file, &value, || cpuset.set_cpus(list))
            }
            Setting::CpusetMems(list) => {
                let cpuset: &CpuSetController = controller(cg, &file, &value)?;
                write_existing(&file, &value, || cpuset.set_mems(list))
            }
            Setting::IoWeight(weight) => {
                if bfq.weight {
                    let io: &BlkIoController = controller(cg, &file, &value)?;
                    write_existing(&file, &value, || io.set_weight(u64::from(*weight)))
                } else {
                    // No BFQ: `io.weight` (blk-iocost), which cgroups-rs 0.3 does not know,
                    // converted. Without either the kernel has no proportional io control, and
                    // the weight is dropped with a warning, as Docker drops it.
                    let file = self.file(IO_WEIGHT);
                    if !file.exists() {
                        tracing::warn!(
                            weight,
                            "blkio weight not applied: neither io.bfq.weight \
                            nor io.weight exists"
                        );
                        return Ok(());
                    }
                    write_file(&file, &blkio_to_io_weight(*weight).to_string())
                }
            }
            Setting::IoDeviceWeight { device, weight } => {
                if !bfq.devices {
                    // As runc: per-device weights exist only in BFQ (Linux 5.4+).
                    tracing::warn!(%device, weight, "per-device blkio weight not applied: BFQ \
                        has no per-device weights here");
                    return Ok(());
                }
                let io: &BlkIoController = controller(cg, &file, &value)?;
                write_existing(&file, &value, || {
                    io.set_weight_for_device(device.major, device.minor, u64::from(*weight))
                })
            }
            Setting::IoMax {
                device,
                limit,
                rate,
            } => {
                let io: &BlkIoController = controller(cg, &file, &value)?;
                let (major, minor, rate) = (device.major, device.minor, *rate);
                write_existing(&file, &value, || match limit {
                    plan::IoLimit::ReadBps => io.throttle_read_bps_for_device(major, minor, rate),
                    plan::IoLimit::WriteBps => io.throttle_write_bps_for_device(major, minor, rate),
                    plan::IoLimit::ReadIops => io.throttle_read_iops_for_device(major, minor, rate),
                    plan::IoLimit::WriteIops => {
                        io.throttle_write_iops_for_device(major, minor, rate)
                    }
                })
            }
        }
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
        let io_file = self.file(IO_STAT);
        let io_text = read_bounded(&io_file, MAX_READ)?.unwrap_or_default();
        let [io_read_bytes, io_write_bytes, io_read_ios, io_write_ios] =
            nested_sums(&io_file, &io_text, ["rbytes", "wbytes", "rios", "wios"])?;
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
            io_read_bytes,
            io_write_bytes,
            io_read_ios,
            io_write_ios,
        })
    }

    /// The pids in this cgroup (`cgroup.procs`), sorted. (Direct: cgroups-rs's `procs` reads
    /// without bound, takes a word that is not a pid for pid 0 and a missing file for none.)
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

    /// Freezes (`true`) or thaws (`false`) the cgroup: writes `cgroup.freeze` (cgroups-rs's
    /// freezer), then waits until `cgroup.events` says `frozen 1` (or `frozen 0`), for at most
    /// `timeout`. On a timeout the request stays written: the caller decides whether to undo
    /// it.
    pub async fn set_frozen(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        let events = self.file(EVENTS);
        // Watch before writing so that the change cannot slip by unseen.
        let watch = AsyncWatch::new(&self.path, &events)?;
        self.request_frozen(frozen)?;
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

    /// Writes the freeze (or thaw) request to `cgroup.freeze`.
    fn request_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value) = (self.file(FREEZE), if frozen { "1" } else { "0" });
        let cg = self.rs();
        let freezer: &FreezerController = controller(&cg, &file, value)?;
        write_existing(&file, value, || {
            if frozen {
                freezer.freeze()
            } else {
                freezer.thaw()
            }
        })
    }

    /// Whether the cgroup is frozen (`frozen 1` in `cgroup.events`).
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

    /// Kills every process in the cgroup: cgroups-rs writes "1" to `cgroup.kill` (Linux
    /// 5.14+; without it, a `NotFound` write error).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let file = self.file(KILL);
        let cg = self.rs();
        write_existing(&file, "1", || cg.kill())
    }

    /// Removes the cgroup's directory (cgroups-rs's `delete`). While processes are still
    /// exiting (`EBUSY`) it retries, woken by changes to `cgroup.events`, for up to
    /// [`REMOVE_WAIT`]; this blocks, so call it on the blocking pool. A missing directory is
    /// fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_WAIT;
        let cg = self.rs();
        let mut watch: Option<Watches> = None;
        loop {
            let source = match cg.delete() {
                Ok(()) => return Ok(()),
                Err(e) => rs_io_error(&e).unwrap_or_else(|| io::Error::other(e.to_string())),
            };
            if source.kind() == io::ErrorKind::NotFound {
                return Ok(());
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIo, LinuxBlockIoBuilder, LinuxCpu, LinuxCpuBuilder, LinuxMemory,
        LinuxMemoryBuilder, LinuxPids, LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder,
    };
    use std::path::Path;
    use tempfile::TempDir;

    /// Files a fresh cgroup directory has, for the code under test to write, and what they
    /// hold until written: a marker, except `cpu.max`, which cgroups-rs reads before writing
    /// and so holds the kernel's default.
    const INTERFACE_FILES: &[(&str, &str)] = &[
        ("cgroup.procs", UNTOUCHED),
        ("cgroup.freeze", UNTOUCHED),
        ("cgroup.kill", UNTOUCHED),
        ("memory.max", UNTOUCHED),
        ("memory.low", UNTOUCHED),
        ("memory.swap.max", UNTOUCHED),
        ("cpu.weight", UNTOUCHED),
        ("cpu.max", "max 100000\n"),
        ("cpuset.cpus", UNTOUCHED),
        ("cpuset.mems", UNTOUCHED),
        ("pids.max", UNTOUCHED),
        ("io.weight", UNTOUCHED),
        ("io.max", UNTOUCHED),
    ];
    const UNTOUCHED: &str = "untouched";

    /// Asserts that every interface file but `written` still holds what [`setup`] put there.
    fn assert_untouched(cg: &Cgroup, written: &[&str]) {
        for (name, initial) in INTERFACE_FILES {
            if !written.contains(name) {
                assert_eq!(read(cg, name), *initial, "{name}");
            }
        }
    }

    /// A fake cgroup root offering `controllers`, and a created cgroup "c1" with the
    /// interface files pre-created.
    fn setup(controllers: &str) -> (TempDir, Cgroup) {
        let root = tempfile::tempdir().expect("temp dir");
        write(&root.path().join(CGROUP_CONTROLLERS), controllers);
        write(&root.path().join(SUBTREE_CONTROL), "");
        let cg = Cgroup::create(root.path(), "c1").expect("create");
        for (name, initial) in INTERFACE_FILES {
            write(&cg.file(name), initial);
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

    fn block_io(io: LinuxBlockIo) -> LinuxResources {
        let mut r = LinuxResources::default();
        r.set_block_io(Some(io));
        r
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
        let mut m = LinuxMemory::default();
        m.set_reservation(Some(-1));
        cg.apply(&resources(Some(m), None)).unwrap();
        assert_eq!(read(&cg, "memory.low"), "max");
    }

    #[test]
    fn apply_writes_only_the_fields_that_are_set() {
        let (_root, cg) = setup("");
        cg.apply(&memory(Some(4096), None)).unwrap();
        assert_eq!(read(&cg, "memory.max"), "4096");
        cg.apply(&cpu(Some(0), Some(0), None)).unwrap();
        cg.apply(&block_io(
            LinuxBlockIoBuilder::default()
                .weight(0_u16)
                .build()
                .unwrap(),
        ))
        .unwrap();
        cg.apply(&LinuxResources::default()).unwrap();
        assert_untouched(&cg, &["memory.max"]);
    }

    #[test]
    fn shares_convert_to_weight_as_runc_does() {
        assert_eq!(plan::shares_to_weight(2).unwrap(), 1);
        assert_eq!(plan::shares_to_weight(1024).unwrap(), 39);
        assert_eq!(plan::shares_to_weight(262_144).unwrap(), 10_000);
        assert_eq!(
            invalid_field(plan::shares_to_weight(1).unwrap_err()),
            "cpu.shares"
        );
        assert_eq!(
            invalid_field(plan::shares_to_weight(262_145).unwrap_err()),
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
        // An invalid throttle after a valid weight: neither is written.
        let mut r = block_io(
            LinuxBlockIoBuilder::default()
                .weight(500_u16)
                .throttle_read_bps_device(vec![throttle(8, 0, 0)])
                .build()
                .unwrap(),
        );
        r.set_pids(Some(LinuxPids::default()));
        let err = cg.apply(&r).unwrap_err();
        assert_eq!(invalid_field(err), "blockIO.throttleReadBpsDevice");
        assert_untouched(&cg, &[]);
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
        write(
            &cg.file(IO_STAT),
            "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
             253:0 rbytes=100 wbytes=200 rios=3 wios=4 dbytes=0 dios=0\n",
        );
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
                io_read_bytes: 4196,
                io_write_bytes: 8392,
                io_read_ios: 4,
                io_write_ios: 6,
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
            (IO_STAT, "8:0 rbytes=many\n"),
            (IO_STAT, "sda rbytes=1\n"),
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
        // Before Linux 5.14: no cgroup.kill, and none is made.
        fs::remove_file(cg.file(KILL)).unwrap();
        let err = cg.kill_all().unwrap_err();
        assert!(
            matches!(&err, CgroupError::Write { file, value, source }
                if file.ends_with(KILL) && value == "1"
                    && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(!cg.file(KILL).exists());
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

    fn throttle(major: i64, minor: i64, rate: u64) -> oci_spec::runtime::LinuxThrottleDevice {
        LinuxThrottleDeviceBuilder::default()
            .major(major)
            .minor(minor)
            .rate(rate)
            .build()
            .unwrap()
    }

    fn io_weight(weight: u16) -> LinuxResources {
        block_io(
            LinuxBlockIoBuilder::default()
                .weight(weight)
                .build()
                .unwrap(),
        )
    }

    fn device_weight(major: i64, minor: i64, weight: u16) -> LinuxResources {
        let wd = LinuxWeightDeviceBuilder::default()
            .major(major)
            .minor(minor)
            .weight(weight)
            .build()
            .unwrap();
        block_io(
            LinuxBlockIoBuilder::default()
                .weight_device(vec![wd])
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn io_weight_goes_to_bfq_as_it_is_or_to_io_weight_converted() {
        let (_root, cg) = setup("");
        // No BFQ: io.weight, converted as runc does.
        cg.apply(&io_weight(100)).unwrap();
        assert_eq!(read(&cg, IO_WEIGHT), "910");
        write(&cg.file(IO_WEIGHT), UNTOUCHED);
        // BFQ: the blkio weight as it is.
        write(&cg.file(IO_BFQ_WEIGHT), "default 100\n");
        cg.apply(&io_weight(500)).unwrap();
        assert_eq!(read(&cg, IO_BFQ_WEIGHT), "500");
        assert_untouched(&cg, &[]);
        // Neither (no BFQ, no blk-iocost): dropped, and no file made.
        fs::remove_file(cg.file(IO_BFQ_WEIGHT)).unwrap();
        fs::remove_file(cg.file(IO_WEIGHT)).unwrap();
        cg.apply(&io_weight(500)).unwrap();
        assert!(!cg.file(IO_WEIGHT).exists() && !cg.file(IO_BFQ_WEIGHT).exists());
    }

    #[test]
    fn device_weights_go_to_bfq_only_where_it_takes_them() {
        let (_root, cg) = setup("");
        // No BFQ: not applied, and nothing else written.
        cg.apply(&device_weight(8, 0, 300)).unwrap();
        assert!(!cg.file(IO_BFQ_WEIGHT).exists());
        // A BFQ without per-device weights (a lone default): not applied.
        write(&cg.file(IO_BFQ_WEIGHT), "100\n");
        cg.apply(&device_weight(8, 0, 300)).unwrap();
        assert_eq!(read(&cg, IO_BFQ_WEIGHT), "100\n");
        // A BFQ with them.
        write(&cg.file(IO_BFQ_WEIGHT), "default 100\n");
        cg.apply(&device_weight(8, 0, 300)).unwrap();
        assert_eq!(read(&cg, IO_BFQ_WEIGHT), "8:0 300");
        assert_untouched(&cg, &[]);
    }

    #[test]
    fn throttles_go_to_io_max() {
        let (_root, cg) = setup("");
        let cases = [
            (
                LinuxBlockIoBuilder::default().throttle_read_bps_device(vec![throttle(
                    8,
                    0,
                    1 << 20,
                )]),
                "8:0 rbps=1048576",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_write_bps_device(vec![throttle(8, 16, 4096)]),
                "8:16 wbps=4096",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_read_iops_device(vec![throttle(253, 0, 100)]),
                "253:0 riops=100",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_write_iops_device(vec![throttle(259, 3, 2)]),
                "259:3 wiops=2",
            ),
        ];
        for (builder, expected) in cases {
            cg.apply(&block_io(builder.build().unwrap())).unwrap();
            assert_eq!(read(&cg, "io.max"), expected);
        }
        assert_untouched(&cg, &["io.max"]);
        // Without the io controller: an error naming io.max, and no file made.
        fs::remove_file(cg.file("io.max")).unwrap();
        let r = block_io(
            LinuxBlockIoBuilder::default()
                .throttle_read_bps_device(vec![throttle(8, 0, 4096)])
                .build()
                .unwrap(),
        );
        let err = cg.apply(&r).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Write { file, value, source }
                if file.ends_with("io.max") && value == "8:0 rbps=4096"
                    && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("io.max"), "{err}");
        assert!(!cg.file("io.max").exists());
    }

    #[test]
    fn a_malformed_cpu_max_is_a_parse_error_naming_it() {
        // cgroups-rs reads cpu.max before writing it.
        let (_root, cg) = setup("");
        write(&cg.file("cpu.max"), "lots\n");
        let err = cg.apply(&cpu(None, Some(50_000), None)).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Parse { file, .. } if file.ends_with("cpu.max")),
            "{err:?}"
        );
        assert!(err.to_string().contains("cpu.max"), "{err}");
    }

    #[test]
    fn writes_never_create_interface_files() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(root.path(), "c1").unwrap();
        let err = cg.apply(&memory(Some(4096), None)).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Write { file, source, .. }
                if file.ends_with("memory.max") && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(!cg.file("memory.max").exists());
        let err = cg.request_frozen(true).unwrap_err();
        assert!(matches!(&err, CgroupError::Write { file, .. } if file.ends_with(FREEZE)));
        assert!(!cg.file(FREEZE).exists());
    }

    #[test]
    fn the_hierarchy_roots_cgroups_rs_anywhere() {
        let root = tempfile::tempdir().unwrap();
        let hierarchy = Hierarchy {
            root: root.path().to_owned(),
        };
        let cg = hierarchy.load("husk/c1");
        assert!(cg.v2());
        assert_eq!(cg.path(), "husk/c1");
        let memory: &MemController = cg.controller_of().unwrap();
        assert_eq!(Controller::path(memory), root.path().join("husk/c1"));
        let freezer: &FreezerController = cg.controller_of().unwrap();
        assert_eq!(Controller::path(freezer), root.path().join("husk/c1"));
        assert_eq!(cg.subsystems().len(), 6);
        let parent = cg.parent_control_group();
        assert_eq!(parent.path(), "husk");
        let io: &BlkIoController = parent.controller_of().unwrap();
        assert_eq!(Controller::path(io), root.path().join("husk"));
        let top = cgroups_rs::Hierarchy::root_control_group(&hierarchy);
        assert_eq!(top.path(), "");
        let pids: &PidController = top.controller_of().unwrap();
        assert_eq!(Controller::path(pids), root.path());
    }

    #[test]
    fn cgroups_rs_errors_keep_the_file_and_the_os_error() {
        let (_root, cg) = setup("");
        let rs = cg.rs();
        let pids: &PidController = rs.controller_of().unwrap();
        // A directory where the file should be: the open fails with EISDIR.
        fs::remove_file(cg.file("pids.max")).unwrap();
        fs::create_dir(cg.file("pids.max")).unwrap();
        let e = pids.set_pid_max(MaxValue::Value(5)).unwrap_err();
        let err = rs_error(&cg.file("pids.max"), "5", e);
        assert!(
            matches!(&err, CgroupError::Write { file, value, source }
                if file.ends_with("pids.max") && value == "5"
                    && source.raw_os_error() == Some(libc::EISDIR)),
            "{err:?}"
        );
    }
}
