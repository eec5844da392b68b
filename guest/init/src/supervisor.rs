//! Supervises the services listed in the image manifest: starts them in order, notices their
//! exit and restarts them with exponential back-off.
//!
//! Owns service state and the restart policy. Must never reap processes itself (the event loop
//! reaps everything, orphans included, and reports service exits here) and never block.

use std::time::{Duration, Instant};

use husk_protocols::manifest::ServiceSpec;

/// First restart delay.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A service that ran at least this long before dying restarts at [`BACKOFF_BASE`] again.
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Starts one service process; returns its pid.
pub trait Spawner {
    fn spawn(&mut self, spec: &ServiceSpec) -> std::io::Result<i32>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running { pid: i32, since: Instant },
    Waiting { until: Instant },
    Stopped,
}

#[derive(Debug)]
struct Service {
    spec: ServiceSpec,
    state: State,
    /// Consecutive quick failures (exits or failed spawns).
    failures: u32,
}

/// A service exit worth reporting to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceExit {
    pub name: String,
    pub restart_in: Duration,
}

/// The set of supervised services.
#[derive(Debug)]
pub struct Supervisor<S> {
    spawner: S,
    services: Vec<Service>,
}

/// The delay before the next restart after `failures` consecutive quick failures.
pub fn backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

impl<S: Spawner> Supervisor<S> {
    pub fn new(spawner: S, specs: Vec<ServiceSpec>) -> Self {
        let services = specs
            .into_iter()
            .map(|spec| Service {
                spec,
                state: State::Stopped,
                failures: 0,
            })
            .collect();
        Self { spawner, services }
    }

    /// Starts every service; returns the names of those that started.
    pub fn start_all(&mut self, now: Instant) -> Vec<String> {
        let mut started = Vec::new();
        for i in 0..self.services.len() {
            if self.start(i, now) {
                started.push(self.services[i].spec.name.clone());
            }
        }
        started
    }

    fn start(&mut self, i: usize, now: Instant) -> bool {
        let svc = &mut self.services[i];
        match self.spawner.spawn(&svc.spec) {
            Ok(pid) => {
                tracing::info!(service = %svc.spec.name, pid, "service started");
                svc.state = State::Running { pid, since: now };
                true
            }
            Err(e) => {
                svc.failures += 1;
                let delay = backoff(svc.failures);
                tracing::error!(service = %svc.spec.name, error = %e, retry_in_ms = delay.as_millis() as u64, "service failed to start");
                svc.state = State::Waiting { until: now + delay };
                false
            }
        }
    }

    /// Records the exit of `pid`. Returns the event to report if it was a service.
    pub fn on_exit(&mut self, pid: i32, now: Instant) -> Option<ServiceExit> {
        let svc = self
            .services
            .iter_mut()
            .find(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid))?;
        let State::Running { since, .. } = svc.state else {
            return None;
        };
        if now.saturating_duration_since(since) >= HEALTHY_RUN {
            svc.failures = 0;
        }
        svc.failures += 1;
        let restart_in = backoff(svc.failures);
        svc.state = State::Waiting {
            until: now + restart_in,
        };
        Some(ServiceExit {
            name: svc.spec.name.clone(),
            restart_in,
        })
    }

    /// When the next restart is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Waiting { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Restarts every service whose back-off has elapsed.
    pub fn restart_due(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            if matches!(self.services[i].state, State::Waiting { until } if until <= now) {
                self.start(i, now);
            }
        }
    }

    /// The pid of the running service `name`.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.services.iter().find_map(|s| match s.state {
            State::Running { pid, .. } if s.spec.name == name => Some(pid),
            _ => None,
        })
    }

    /// Stops supervising: no more restarts. Returns the pids still running.
    pub fn stop_all(&mut self) -> Vec<i32> {
        let mut pids = Vec::new();
        for s in &mut self.services {
            if let State::Running { pid, .. } = s.state {
                pids.push(pid);
            }
            s.state = State::Stopped;
        }
        pids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocols::manifest::ServiceStdio;

    #[derive(Default)]
    struct FakeSpawner {
        next_pid: i32,
        fail: bool,
        spawned: Vec<String>,
    }

    impl Spawner for FakeSpawner {
        fn spawn(&mut self, spec: &ServiceSpec) -> std::io::Result<i32> {
            self.spawned.push(spec.name.clone());
            if self.fail {
                return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
            }
            self.next_pid += 1;
            Ok(100 + self.next_pid)
        }
    }

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: vec!["/x".into()],
            env: vec![],
            stdio: ServiceStdio::Log,
            enabled_by: None,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(20), BACKOFF_MAX);
        assert_eq!(backoff(200), BACKOFF_MAX);
    }

    #[test]
    fn restarts_after_backoff_and_ignores_orphans() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(FakeSpawner::default(), vec![spec("a"), spec("b")]);
        assert_eq!(sup.start_all(t0), ["a", "b"]);
        assert_eq!(sup.on_exit(999, t0), None, "an orphan is not a service");
        let exit = sup.on_exit(101, t0).unwrap();
        assert_eq!(
            exit,
            ServiceExit {
                name: "a".into(),
                restart_in: Duration::from_millis(100)
            }
        );
        assert_eq!(sup.next_deadline(), Some(t0 + Duration::from_millis(100)));
        sup.restart_due(t0 + Duration::from_millis(50));
        assert_eq!(sup.spawner.spawned.len(), 2, "not yet due");
        sup.restart_due(t0 + Duration::from_millis(100));
        assert_eq!(sup.spawner.spawned, ["a", "b", "a"]);
        // A second quick death doubles the delay.
        let exit = sup.on_exit(103, t0 + Duration::from_millis(150)).unwrap();
        assert_eq!(exit.restart_in, Duration::from_millis(200));
    }

    #[test]
    fn healthy_run_resets_backoff() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(FakeSpawner::default(), vec![spec("a")]);
        sup.start_all(t0);
        sup.on_exit(101, t0);
        sup.restart_due(t0 + BACKOFF_BASE);
        let exit = sup.on_exit(102, t0 + BACKOFF_BASE + HEALTHY_RUN).unwrap();
        assert_eq!(exit.restart_in, BACKOFF_BASE);
    }

    #[test]
    fn failed_spawn_is_retried_and_stop_all_ends_restarts() {
        let t0 = Instant::now();
        let mut sup = Supervisor::new(
            FakeSpawner {
                fail: true,
                ..Default::default()
            },
            vec![spec("a")],
        );
        assert!(sup.start_all(t0).is_empty());
        assert_eq!(sup.next_deadline(), Some(t0 + BACKOFF_BASE));
        sup.spawner.fail = false;
        sup.restart_due(t0 + BACKOFF_BASE);
        assert_eq!(sup.stop_all(), [101]);
        assert_eq!(sup.next_deadline(), None);
    }
}
