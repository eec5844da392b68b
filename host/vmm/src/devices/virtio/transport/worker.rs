//! The worker thread a model runs on behind the builtin (virtio-mmio) transport: one epoll over
//! a set of eventfds (the queues' kick eventfds, or any other per-queue eventfd) plus a stop
//! eventfd; each time eventfd `i` fires it is drained and [`EventHandler::handle`] is called
//! with `i`.
//!
//! [`spawn_request_queue`] is the event handling every single-queue request device (block,
//! rng) shares: one kick, one pass of the device's queue core, an interrupt if wanted.
//!
//! Owns the thread, the epoll and the stop signal only. Must never look at a queue's buffers
//! (the handler does) and must never be used by the vhost-user back ends (their framework has
//! its own event loop). Stopping always joins: a model's `reset` returns only when its worker is
//! gone, so the queues and guest memory it held are released.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::{debug, error, warn};
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{ActivateContext, ActivateError, GuestMemoryMmap, Interrupt};
use crate::seccomp::{Enforcement, ThreadKind};

/// The epoll token of the stop eventfd (event indices are small).
const STOP_TOKEN: u64 = u64::MAX;
/// How many ready events one `epoll_wait` returns at most.
const MAX_EVENTS: usize = 8;

/// What a worker does when one of its eventfds fires.
pub trait EventHandler: Send + 'static {
    /// Eventfd `index` (its position in the list given to [`Worker::spawn`]) fired and was
    /// drained.
    fn handle(&mut self, index: usize);
}

/// A running worker thread; stopped and joined by [`Worker::stop`] or on drop.
#[derive(Debug)]
pub struct Worker {
    name: &'static str,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a thread named `husk-<name>` that waits on `events` and calls `handler`.
    /// The thread confines itself with the device seccomp filter (`seccomp`) before it serves
    /// anything; if it cannot, it serves nothing (fail closed) and says why.
    pub fn spawn<H: EventHandler>(
        name: &'static str,
        events: Vec<EventFd>,
        handler: H,
        seccomp: Enforcement,
    ) -> io::Result<Self> {
        let filter = crate::seccomp::filter(ThreadKind::Device, seccomp)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        for (index, event) in events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index as u64),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let thread = thread::Builder::new()
            .name(format!("husk-{name}"))
            .spawn(move || {
                if let Some(f) = &filter {
                    if let Err(e) = f.install() {
                        error!(
                            worker = name,
                            "cannot confine the worker with seccomp, it serves nothing: {e}"
                        );
                        return;
                    }
                }
                run(name, &epoll, &events, handler)
            })?;
        Ok(Self {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// Signals the thread to stop and joins it (idempotent).
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            // Without the signal the join below would hang forever; leak the thread instead.
            error!(worker = self.name, "cannot signal the worker to stop: {e}");
            return;
        }
        if thread.join().is_err() {
            error!(worker = self.name, "the worker thread panicked");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The one request queue of a request/response device (block, rng), served on a worker: each
/// kick runs `process` over the queue and raises the used-buffer interrupt when it says the
/// driver wants one.
struct RequestQueue<P> {
    device: &'static str,
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    process: P,
}

/// The queue index of a single-queue device's request queue.
const REQUEST_QUEUE: u16 = 0;

impl<P, E> EventHandler for RequestQueue<P>
where
    P: FnMut(&mut Queue, u16, &GuestMemoryMmap) -> Result<bool, E> + Send + 'static,
    E: std::fmt::Display,
{
    fn handle(&mut self, _index: usize) {
        match (self.process)(&mut self.queue, REQUEST_QUEUE, &self.mem) {
            Ok(true) => {
                if let Err(e) = self.interrupt.signal_used_queue(REQUEST_QUEUE) {
                    warn!(
                        device = self.device,
                        queue = REQUEST_QUEUE,
                        "cannot raise the interrupt: {e}"
                    );
                }
            }
            Ok(false) => {}
            Err(e) => warn!("{e}"),
        }
    }
}

/// Activates a single-queue request device: checks that the driver set up exactly one queue
/// and starts a worker that serves it with `process` (the device's queue core, shared with its
/// vhost-user back end).
pub fn spawn_request_queue<P, E>(
    device: &'static str,
    ctx: ActivateContext,
    process: P,
) -> Result<Worker, ActivateError>
where
    P: FnMut(&mut Queue, u16, &GuestMemoryMmap) -> Result<bool, E> + Send + 'static,
    E: std::fmt::Display,
{
    let ActivateContext {
        mem,
        queues,
        queue_events,
        interrupt,
        seccomp,
    } = ctx;
    let (Ok([queue]), 1) = (<[Queue; 1]>::try_from(queues), queue_events.len()) else {
        return Err(ActivateError::QueueCount {
            device,
            expected: 1,
            got: queue_events.len(),
        });
    };
    let handler = RequestQueue {
        device,
        queue,
        mem,
        interrupt,
        process,
    };
    Worker::spawn(device, queue_events, handler, seccomp).map_err(|source| ActivateError::Io {
        device,
        what: "cannot start the worker thread".into(),
        source,
    })
}

fn run<H: EventHandler>(name: &'static str, epoll: &Epoll, events: &[EventFd], mut handler: H) {
    let mut ready = [EpollEvent::default(); MAX_EVENTS];
    loop {
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(worker = name, "epoll_wait failed, the worker stops: {e}");
                return;
            }
        };
        for event in &ready[..n] {
            let token = event.data();
            if token == STOP_TOKEN {
                debug!(worker = name, "stopping");
                return;
            }
            let Some(fd) = usize::try_from(token).ok().and_then(|i| events.get(i)) else {
                warn!(worker = name, token, "event for an unknown eventfd");
                continue;
            };
            match fd.read() {
                Ok(_) => {}
                // Already drained (spurious wake-up): nothing new to do.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    warn!(worker = name, index = token, "cannot drain eventfd: {e}");
                    continue;
                }
            }
            handler.handle(token as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    struct Forward(mpsc::Sender<usize>);

    impl EventHandler for Forward {
        fn handle(&mut self, index: usize) {
            let _ = self.0.send(index);
        }
    }

    #[test]
    fn calls_the_handler_with_the_index_and_stops_on_request() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (b_writer, a_writer) = (b.try_clone().unwrap(), a.try_clone().unwrap());
        let (tx, rx) = mpsc::channel();
        let mut worker =
            Worker::spawn("test-worker", vec![a, b], Forward(tx), Enforcement::Kill).unwrap();
        b_writer.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        a_writer.write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
        worker.stop();
        worker.stop();
        // The handler (and its sender) is gone with the thread.
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_err());
    }
}
