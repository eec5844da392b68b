//! The guest's container statistics as containerd's cgroup v2 `Metrics`, packed the way
//! containerd's typeurl registry expects them (`ctr task metrics` decodes them).
//!
//! Owns the field mapping. Must never invent figures the guest did not give (they stay 0).

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use husk_protocols::agent::ContainerStats;
use husk_protocols::containerd::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat, METRICS_TYPE_URL,
};
use protobuf::{Message, MessageField};

/// Maps the agent's statistics onto containerd's metrics.
pub fn from_guest(s: &ContainerStats) -> Metrics {
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids_current,
            limit: s.pids_limit,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            nr_throttled: s.cpu_throttled_periods,
            throttled_usec: s.cpu_throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: s.memory_usage_bytes,
            usage_limit: s.memory_limit_bytes,
            anon: s.memory_anon_bytes,
            file: s.memory_file_bytes,
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: s.oom_kills,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Packs metrics into an `Any` for a StatsResponse.
pub fn pack(m: &Metrics) -> Result<Any, protobuf::Error> {
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_owned(),
        value: m.write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_map_and_pack() {
        let s = ContainerStats {
            memory_usage_bytes: 5,
            memory_limit_bytes: 64,
            pids_current: 2,
            pids_limit: 50,
            cpu_usage_usec: 9,
            oom_kills: 1,
            ..Default::default()
        };
        let m = from_guest(&s);
        assert_eq!((m.memory.usage, m.memory.usage_limit), (5, 64));
        assert_eq!((m.pids.current, m.pids.limit, m.cpu.usage_usec), (2, 50, 9));
        assert_eq!(m.memory_events.oom_kill, 1);
        let any = pack(&m).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }
}
