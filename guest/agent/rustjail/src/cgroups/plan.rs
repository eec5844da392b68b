//! The translation of OCI `linux.resources` into cgroup2 settings, validated against the
//! kernel's bounds: memory (limit, swap, reservation), cpu (shares, quota, period, cpus, mems),
//! pids and io (blockIO weight, per-device weights and throttles).
//!
//! Owns every conversion from an OCI value to what a cgroup2 interface file takes (shares to
//! `cpu.weight` and memory+swap to `memory.swap.max` as runc converts them, blkio weights to
//! `io.weight`) and the refusal of values the kernel would refuse or misread. Must never touch
//! the system: it is pure, so that a request is refused whole before anything is written.

use std::fmt;

use cgroups_rs::MaxValue;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::CgroupError;

/// The CFS period used when the spec sets a quota but no period (the kernel's default), µs.
const DEFAULT_CPU_PERIOD: u64 = 100_000;
/// The kernel's bounds on the CFS period and the smallest quota, µs.
const CPU_PERIOD_RANGE: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
const MIN_CPU_QUOTA: i64 = 1_000;
/// The cgroup v1 `cpu.shares` range that maps onto `cpu.weight` 1-10000.
const CPU_SHARES_RANGE: std::ops::RangeInclusive<u64> = 2..=262_144;
/// The cgroup v1 blkio weight range (OCI's), which `io.bfq.weight` takes as it is and which
/// maps onto `io.weight` 1-10000.
const BLKIO_WEIGHT_RANGE: std::ops::RangeInclusive<u16> = 10..=1000;
/// The largest device numbers the kernel has (12 bits of major, 20 of minor).
const MAX_MAJOR: i64 = (1 << 12) - 1;
const MAX_MINOR: i64 = (1 << 20) - 1;
/// The smallest `io.max` rate: the kernel refuses 0, and older kernels 1 as well.
const MIN_IO_RATE: u64 = 2;

/// A block device, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Device {
    pub major: u64,
    pub minor: u64,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Which of `io.max`'s four limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IoLimit {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl IoLimit {
    /// The key in `io.max`.
    pub fn key(self) -> &'static str {
        match self {
            Self::ReadBps => "rbps",
            Self::WriteBps => "wbps",
            Self::ReadIops => "riops",
            Self::WriteIops => "wiops",
        }
    }

    /// The OCI field that sets it.
    fn field(self) -> &'static str {
        match self {
            Self::ReadBps => "blockIO.throttleReadBpsDevice",
            Self::WriteBps => "blockIO.throttleWriteBpsDevice",
            Self::ReadIops => "blockIO.throttleReadIOPSDevice",
            Self::WriteIops => "blockIO.throttleWriteIOPSDevice",
        }
    }
}

/// One validated value for one cgroup2 interface file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Setting {
    /// `pids.max`.
    PidsMax(MaxValue),
    /// `memory.swap.max`; skipped when the kernel has no swap accounting (no such file).
    SwapMax(MaxValue),
    /// `memory.max`.
    MemoryMax(MaxValue),
    /// `memory.low`, from the reservation.
    MemoryLow(MaxValue),
    /// `cpu.weight`, converted from shares.
    CpuWeight(u64),
    /// `cpu.max`: the quota (`None`: "max") and the period, µs.
    CpuMax { quota: Option<i64>, period: u64 },
    /// `cpuset.cpus`.
    CpusetCpus(String),
    /// `cpuset.mems`.
    CpusetMems(String),
    /// The blkio weight (10-1000): `io.bfq.weight` as it is where BFQ is there, else
    /// `io.weight` converted ([`blkio_to_io_weight`]), else nothing (no proportional io).
    IoWeight(u16),
    /// A device's blkio weight (10-1000): `io.bfq.weight` "MAJ:MIN WEIGHT", where BFQ takes
    /// per-device weights (runc writes them nowhere else).
    IoDeviceWeight { device: Device, weight: u16 },
    /// One `io.max` limit of one device.
    IoMax {
        device: Device,
        limit: IoLimit,
        rate: u64,
    },
}

impl Setting {
    /// The interface file it is written to ([`Setting::IoWeight`] names `io.bfq.weight`; its
    /// fallback is `io.weight`).
    pub fn file(&self) -> &'static str {
        match self {
            Self::PidsMax(_) => "pids.max",
            Self::SwapMax(_) => "memory.swap.max",
            Self::MemoryMax(_) => "memory.max",
            Self::MemoryLow(_) => "memory.low",
            Self::CpuWeight(_) => "cpu.weight",
            Self::CpuMax { .. } => "cpu.max",
            Self::CpusetCpus(_) => "cpuset.cpus",
            Self::CpusetMems(_) => "cpuset.mems",
            Self::IoWeight(_) | Self::IoDeviceWeight { .. } => "io.bfq.weight",
            Self::IoMax { .. } => "io.max",
        }
    }

    /// The text written.
    pub fn value(&self) -> String {
        match self {
            Self::PidsMax(v) | Self::SwapMax(v) | Self::MemoryMax(v) | Self::MemoryLow(v) => {
                v.to_string()
            }
            Self::CpuWeight(w) => w.to_string(),
            Self::CpuMax { quota, period } => match quota {
                Some(q) => format!("{q} {period}"),
                None => format!("max {period}"),
            },
            Self::CpusetCpus(list) | Self::CpusetMems(list) => list.clone(),
            Self::IoWeight(w) => w.to_string(),
            Self::IoDeviceWeight { device, weight } => format!("{device} {weight}"),
            Self::IoMax {
                device,
                limit,
                rate,
            } => format!("{device} {}={rate}", limit.key()),
        }
    }
}

/// The settings for `resources`, validated, in the order they are written. Only the fields
/// that are set give settings; fields cgroup v2 has no file for are logged and skipped.
pub(super) fn plan(resources: &LinuxResources) -> Result<Vec<Setting>, CgroupError> {
    let mut settings = Vec::new();
    if let Some(pids) = resources.pids() {
        let limit = pids.limit();
        settings.push(Setting::PidsMax(if limit <= 0 {
            MaxValue::Max
        } else {
            MaxValue::Value(limit)
        }));
    }
    if let Some(memory) = resources.memory() {
        plan_memory(memory, &mut settings)?;
    }
    if let Some(cpu) = resources.cpu() {
        plan_cpu(cpu, &mut settings)?;
    }
    if let Some(block_io) = resources.block_io() {
        plan_io(block_io, &mut settings)?;
    }
    let ignored = [
        ("devices", resources.devices().is_some()),
        ("hugepageLimits", resources.hugepage_limits().is_some()),
        ("network", resources.network().is_some()),
        ("rdma", resources.rdma().is_some()),
        ("unified", resources.unified().is_some()),
    ];
    log_ignored(&ignored);
    Ok(settings)
}

fn log_ignored(fields: &[(&str, bool)]) {
    for (field, set) in fields {
        if *set {
            tracing::debug!(field, "linux.resources field not applied");
        }
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> CgroupError {
    CgroupError::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}

/// `-1` as "max", a positive count as itself, `0` as unset (as runc does).
fn count_or_max(field: &'static str, value: i64) -> Result<Option<MaxValue>, CgroupError> {
    match value {
        -1 => Ok(Some(MaxValue::Max)),
        0 => Ok(None),
        v if v > 0 => Ok(Some(MaxValue::Value(v))),
        v => Err(invalid(field, v, "must be -1 (unlimited) or a byte count")),
    }
}

fn plan_memory(memory: &LinuxMemory, settings: &mut Vec<Setting>) -> Result<(), CgroupError> {
    let limit = memory.limit();
    let max = limit
        .map(|v| count_or_max("memory.limit", v))
        .transpose()?
        .flatten();
    let reservation = memory.reservation();
    let low = reservation
        .map(|v| count_or_max("memory.reservation", v))
        .transpose()?
        .flatten();
    if let (Some(MaxValue::Value(low)), Some(MaxValue::Value(max))) = (low, max) {
        if low > max {
            return Err(invalid(
                "memory.reservation",
                low,
                "must not exceed memory.limit",
            ));
        }
    }
    let swap = swap_max(memory.swap(), limit)?;
    if let Some(swap) = swap {
        settings.push(Setting::SwapMax(swap));
    }
    if let Some(max) = max {
        settings.push(Setting::MemoryMax(max));
    }
    if let Some(low) = low {
        settings.push(Setting::MemoryLow(low));
    }
    let ignored = [
        ("memory.kernel", memory.kernel().is_some()),
        ("memory.kernelTCP", memory.kernel_tcp().is_some()),
        ("memory.swappiness", memory.swappiness().is_some()),
        (
            "memory.disableOOMKiller",
            memory.disable_oom_killer().is_some(),
        ),
    ];
    log_ignored(&ignored);
    Ok(())
}

/// cgroup2's `memory.swap.max` from OCI's memory+swap `swap` and memory `limit`, as runc's
/// `ConvertMemorySwapToCgroupV2Value`: swap alone is `swap - limit`.
fn swap_max(swap: Option<i64>, limit: Option<i64>) -> Result<Option<MaxValue>, CgroupError> {
    match swap.unwrap_or(0) {
        // Unlimited memory with swap unset: both unlimited.
        0 if limit == Some(-1) => Ok(Some(MaxValue::Max)),
        0 => Ok(None),
        -1 => Ok(Some(MaxValue::Max)),
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
                    Ok(Some(MaxValue::Value(s - l)))
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
pub(super) fn shares_to_weight(shares: u64) -> Result<u64, CgroupError> {
    if !CPU_SHARES_RANGE.contains(&shares) {
        return Err(invalid(
            "cpu.shares",
            shares,
            "must be 2-262144 (0 leaves it unset)",
        ));
    }
    Ok(1 + ((shares - 2) * 9999) / 262_142)
}

/// runc's conversion from a blkio weight (10-1000) to `io.weight` (1-10000): the one range
/// stretched linearly onto the other.
pub(super) fn blkio_to_io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(*BLKIO_WEIGHT_RANGE.start(), *BLKIO_WEIGHT_RANGE.end()));
    1 + (weight - 10) * 9999 / 990
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

fn plan_cpu(cpu: &LinuxCpu, settings: &mut Vec<Setting>) -> Result<(), CgroupError> {
    let weight = match cpu.shares() {
        None | Some(0) => None,
        Some(shares) => Some(shares_to_weight(shares)?),
    };
    // `None`: not set; `Some(None)`: "max".
    let quota = match cpu.quota() {
        None | Some(0) => None,
        Some(-1) => Some(None),
        Some(q) if q >= MIN_CPU_QUOTA => Some(Some(q)),
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
        (quota, period) => Some(Setting::CpuMax {
            quota: quota.flatten(),
            period: period.unwrap_or(DEFAULT_CPU_PERIOD),
        }),
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
    settings.extend(weight.map(Setting::CpuWeight));
    settings.extend(cpu_max);
    settings.extend(cpus.map(Setting::CpusetCpus));
    settings.extend(mems.map(Setting::CpusetMems));
    let ignored = [
        ("cpu.idle", cpu.idle().is_some()),
        ("cpu.burst", cpu.burst().is_some()),
        ("cpu.realtimeRuntime", cpu.realtime_runtime().is_some()),
        ("cpu.realtimePeriod", cpu.realtime_period().is_some()),
    ];
    log_ignored(&ignored);
    Ok(())
}

/// A device number from the spec, within the kernel's bounds.
fn device(field: &'static str, major: i64, minor: i64) -> Result<Device, CgroupError> {
    if !(0..=MAX_MAJOR).contains(&major) || !(0..=MAX_MINOR).contains(&minor) {
        return Err(invalid(
            field,
            format!("{major}:{minor}"),
            "is not a device number (major 0-4095, minor 0-1048575)",
        ));
    }
    Ok(Device {
        major: major as u64,
        minor: minor as u64,
    })
}

fn blkio_weight(
    field: &'static str,
    value: impl ToString,
    weight: u16,
) -> Result<u16, CgroupError> {
    if BLKIO_WEIGHT_RANGE.contains(&weight) {
        Ok(weight)
    } else {
        Err(invalid(field, value, "weight must be 10-1000"))
    }
}

fn plan_io(io: &LinuxBlockIo, settings: &mut Vec<Setting>) -> Result<(), CgroupError> {
    let mut planned = Vec::new();
    match io.weight() {
        None | Some(0) => {}
        Some(w) => planned.push(Setting::IoWeight(blkio_weight("blockIO.weight", w, w)?)),
    }
    let mut leaf_weight = io.leaf_weight().is_some();
    for wd in io.weight_device().iter().flatten() {
        const FIELD: &str = "blockIO.weightDevice";
        let device = device(FIELD, wd.major(), wd.minor())?;
        leaf_weight |= wd.leaf_weight().is_some();
        if let Some(w) = wd.weight() {
            let weight = blkio_weight(FIELD, format!("{device} {w}"), w)?;
            planned.push(Setting::IoDeviceWeight { device, weight });
        }
    }
    let throttles = [
        (IoLimit::ReadBps, io.throttle_read_bps_device()),
        (IoLimit::WriteBps, io.throttle_write_bps_device()),
        (IoLimit::ReadIops, io.throttle_read_iops_device()),
        (IoLimit::WriteIops, io.throttle_write_iops_device()),
    ];
    for (limit, devices) in throttles {
        for td in devices.iter().flatten() {
            let device = device(limit.field(), td.major(), td.minor())?;
            let rate = td.rate();
            if rate < MIN_IO_RATE {
                return Err(invalid(
                    limit.field(),
                    format!("{device} {rate}"),
                    "rate must be at least 2 (the kernel refuses 0, and older kernels 1)",
                ));
            }
            planned.push(Setting::IoMax {
                device,
                limit,
                rate,
            });
        }
    }
    // cgroup v2 has no leaf weights.
    log_ignored(&[("blockIO.leafWeight", leaf_weight)]);
    settings.extend(planned);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxMemoryBuilder, LinuxThrottleDeviceBuilder,
        LinuxWeightDeviceBuilder,
    };

    fn invalid_field(err: CgroupError) -> &'static str {
        match err {
            CgroupError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn with_io(io: LinuxBlockIo) -> LinuxResources {
        let mut r = LinuxResources::default();
        r.set_block_io(Some(io));
        r
    }

    fn with_memory(memory: LinuxMemory) -> LinuxResources {
        let mut r = LinuxResources::default();
        r.set_memory(Some(memory));
        r
    }

    fn throttle(major: i64, minor: i64, rate: u64) -> oci_spec::runtime::LinuxThrottleDevice {
        LinuxThrottleDeviceBuilder::default()
            .major(major)
            .minor(minor)
            .rate(rate)
            .build()
            .unwrap()
    }

    fn weight_device(
        major: i64,
        minor: i64,
        weight: Option<u16>,
        leaf: Option<u16>,
    ) -> oci_spec::runtime::LinuxWeightDevice {
        let mut builder = LinuxWeightDeviceBuilder::default()
            .major(major)
            .minor(minor);
        if let Some(weight) = weight {
            builder = builder.weight(weight);
        }
        if let Some(leaf) = leaf {
            builder = builder.leaf_weight(leaf);
        }
        builder.build().unwrap()
    }

    #[test]
    fn blkio_weight_converts_to_io_weight_as_runc_does() {
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(100), 910);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn io_settings_in_order_with_their_files_and_values() {
        let io = LinuxBlockIoBuilder::default()
            .weight(500_u16)
            .leaf_weight(300_u16)
            .weight_device(vec![
                weight_device(8, 0, Some(200), Some(100)),
                // A leaf weight alone: nothing for cgroup v2.
                weight_device(8, 16, None, Some(100)),
            ])
            .throttle_read_bps_device(vec![throttle(8, 0, 1_048_576)])
            .throttle_write_bps_device(vec![throttle(8, 0, 2_097_152), throttle(253, 1, 4096)])
            .throttle_read_iops_device(vec![throttle(8, 0, 100)])
            .throttle_write_iops_device(vec![throttle(259, 1_048_575, 2)])
            .build()
            .unwrap();
        let settings = plan(&with_io(io)).unwrap();
        let written: Vec<(&str, String)> = settings.iter().map(|s| (s.file(), s.value())).collect();
        assert_eq!(
            written,
            [
                ("io.bfq.weight", "500".to_owned()),
                ("io.bfq.weight", "8:0 200".to_owned()),
                ("io.max", "8:0 rbps=1048576".to_owned()),
                ("io.max", "8:0 wbps=2097152".to_owned()),
                ("io.max", "253:1 wbps=4096".to_owned()),
                ("io.max", "8:0 riops=100".to_owned()),
                ("io.max", "259:1048575 wiops=2".to_owned()),
            ]
        );
        assert_eq!(settings[0], Setting::IoWeight(500));
    }

    #[test]
    fn an_unset_or_zero_io_weight_writes_nothing() {
        assert_eq!(plan(&with_io(LinuxBlockIo::default())).unwrap(), []);
        let io = LinuxBlockIoBuilder::default()
            .weight(0_u16)
            .build()
            .unwrap();
        assert_eq!(plan(&with_io(io)).unwrap(), []);
    }

    #[test]
    fn invalid_io_values_are_refused_naming_the_field() {
        let cases = [
            (
                LinuxBlockIoBuilder::default().weight(9_u16).build(),
                "blockIO.weight",
                "9",
            ),
            (
                LinuxBlockIoBuilder::default().weight(1001_u16).build(),
                "blockIO.weight",
                "1001",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .weight_device(vec![weight_device(8, 0, Some(5), None)])
                    .build(),
                "blockIO.weightDevice",
                "8:0 5",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .weight_device(vec![weight_device(-1, 0, Some(100), None)])
                    .build(),
                "blockIO.weightDevice",
                "-1:0",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_read_bps_device(vec![throttle(8, 0, 0)])
                    .build(),
                "blockIO.throttleReadBpsDevice",
                "8:0 0",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_write_bps_device(vec![throttle(8, 0, 1)])
                    .build(),
                "blockIO.throttleWriteBpsDevice",
                "8:0 1",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_read_iops_device(vec![throttle(4096, 0, 10)])
                    .build(),
                "blockIO.throttleReadIOPSDevice",
                "4096:0",
            ),
            (
                LinuxBlockIoBuilder::default()
                    .throttle_write_iops_device(vec![throttle(8, 1 << 20, 10)])
                    .build(),
                "blockIO.throttleWriteIOPSDevice",
                "8:1048576",
            ),
        ];
        for (io, field, value) in cases {
            let err = plan(&with_io(io.unwrap())).unwrap_err();
            let message = err.to_string();
            assert_eq!(invalid_field(err), field);
            assert!(
                message.contains(field) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn reservation_is_memory_low() {
        let settings = |limit: Option<i64>, reservation: i64| {
            let mut m = LinuxMemory::default();
            m.set_limit(limit);
            m.set_reservation(Some(reservation));
            plan(&with_memory(m))
        };
        assert_eq!(
            settings(None, 4096).unwrap(),
            [Setting::MemoryLow(MaxValue::Value(4096))]
        );
        assert_eq!(
            settings(None, -1).unwrap(),
            [Setting::MemoryLow(MaxValue::Max)]
        );
        assert_eq!(settings(None, 0).unwrap(), []);
        // Up to the limit, and anything under an unlimited one.
        assert_eq!(
            settings(Some(4096), 4096).unwrap(),
            [
                Setting::MemoryMax(MaxValue::Value(4096)),
                Setting::MemoryLow(MaxValue::Value(4096)),
            ]
        );
        assert_eq!(
            settings(Some(-1), 1 << 40).unwrap(),
            [
                Setting::SwapMax(MaxValue::Max),
                Setting::MemoryMax(MaxValue::Max),
                Setting::MemoryLow(MaxValue::Value(1 << 40)),
            ]
        );
        assert_eq!(Setting::MemoryLow(MaxValue::Max).file(), "memory.low");
        assert_eq!(Setting::MemoryLow(MaxValue::Max).value(), "max");
    }

    #[test]
    fn invalid_reservations_are_refused_naming_the_field() {
        for (limit, reservation, value) in [(None, -2, "-2"), (Some(4096), 8192, "8192")] {
            let m = LinuxMemoryBuilder::default()
                .reservation(reservation)
                .build()
                .unwrap();
            let mut m = m;
            m.set_limit(limit);
            let err = plan(&with_memory(m)).unwrap_err();
            let message = err.to_string();
            assert_eq!(invalid_field(err), "memory.reservation");
            assert!(message.contains(value), "{message}");
        }
    }

    #[test]
    fn cpu_max_values() {
        let cpu_max = |quota: Option<i64>, period: u64| Setting::CpuMax { quota, period }.value();
        assert_eq!(cpu_max(Some(50_000), 200_000), "50000 200000");
        assert_eq!(cpu_max(None, 100_000), "max 100000");
    }
}
