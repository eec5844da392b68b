//! The virtio-mmio vsock worker: one thread per activated device that waits (epoll) on the
//! rx/tx/event queue kicks, the muxer's host sockets and a stop eventfd, runs the shared
//! [`VsockModel`] core and raises the interrupt when the driver needs one.
//!
//! Owns the thread and its epoll set. Must never outlive the device: [`Worker::stop`] (called
//! by reset and drop) signals the stop eventfd and joins the thread, which hands the model
//! back; every fd it created is closed when it returns.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::ThreadKind;

use super::model::{ModelError, VsockModel};
use super::{NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::{ActivateContext, ActivateError, GuestMemoryMmap, Interrupt};

const DEVICE: &str = "vsock";
/// epoll tokens besides the queue indices.
const MUXER_TOKEN: u64 = NUM_QUEUES as u64;
const STOP_TOKEN: u64 = MUXER_TOKEN + 1;

/// A running worker thread.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    handle: JoinHandle<VsockModel>,
}

/// Why the worker did not start, and the model back when it still exists.
#[derive(Debug)]
pub struct SpawnError {
    pub error: ActivateError,
    pub model: Option<Box<VsockModel>>,
}

struct Running {
    model: VsockModel,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    interrupt: Arc<dyn Interrupt>,
    epoll: Epoll,
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> ActivateError + '_ {
    move |source| ActivateError::Io {
        device: DEVICE,
        what: what.to_owned(),
        source,
    }
}

impl Worker {
    /// Starts serving `ctx`'s queues with `model`; on error the model comes back with it.
    pub fn spawn(model: VsockModel, ctx: ActivateContext) -> Result<Self, SpawnError> {
        match Self::prepare(&model, &ctx) {
            Ok((stop, epoll)) => {
                let filter = match crate::seccomp::filter(ThreadKind::Device, ctx.seccomp) {
                    Ok(f) => f,
                    Err(e) => {
                        return Err(SpawnError {
                            error: ActivateError::Backend {
                                device: "vsock",
                                detail: e.to_string(),
                            },
                            model: Some(Box::new(model)),
                        })
                    }
                };
                let running = Running {
                    model,
                    mem: ctx.mem,
                    queues: ctx.queues,
                    queue_events: ctx.queue_events,
                    interrupt: ctx.interrupt,
                    epoll,
                };
                let handle = std::thread::Builder::new()
                    .name("husk-vsock".into())
                    .spawn(move || {
                        // Confined before serving anything; unconfined it serves nothing.
                        if let Some(f) = &filter {
                            if let Err(e) = f.install() {
                                tracing::error!(
                                    "vsock: cannot confine the worker with seccomp, it serves nothing: {e}"
                                );
                                return running.model;
                            }
                        }
                        running.run()
                    })
                    .map_err(|e| SpawnError {
                        error: io_err("spawning the worker thread")(e),
                        model: None,
                    })?;
                Ok(Self { stop, handle })
            }
            Err(error) => Err(SpawnError {
                error,
                model: Some(Box::new(model)),
            }),
        }
    }

    fn prepare(
        model: &VsockModel,
        ctx: &ActivateContext,
    ) -> Result<(EventFd, Epoll), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES || ctx.queue_events.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                device: DEVICE,
                expected: NUM_QUEUES,
                got: ctx.queues.len().min(ctx.queue_events.len()),
            });
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("creating the stop eventfd"))?;
        let epoll = Epoll::new().map_err(io_err("creating the epoll set"))?;
        let add = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        for (i, ev) in ctx.queue_events.iter().enumerate() {
            add(ev.as_raw_fd(), i as u64).map_err(io_err("watching a queue kick"))?;
        }
        add(model.as_raw_fd(), MUXER_TOKEN).map_err(io_err("watching the muxer"))?;
        add(stop.as_raw_fd(), STOP_TOKEN).map_err(io_err("watching the stop eventfd"))?;
        Ok((stop, epoll))
    }

    /// Stops the thread and takes the model back (`None` if the thread panicked).
    pub fn stop(self) -> Option<VsockModel> {
        if let Err(e) = self.stop.write(1) {
            tracing::error!("vsock: cannot stop the worker: {e}");
        }
        self.handle.join().ok()
    }
}

impl Running {
    fn run(mut self) -> VsockModel {
        let mut events = [EpollEvent::default(); NUM_QUEUES + 2];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("vsock: worker epoll failed, stopping: {e}");
                    return self.model;
                }
            };
            for ev in events.iter().take(n) {
                match ev.data() {
                    STOP_TOKEN => return self.model,
                    MUXER_TOKEN => self.model.process_muxer_events(),
                    q => {
                        // A kick: drain its eventfd; the queues are all looked at below.
                        if let Some(fd) = usize::try_from(q)
                            .ok()
                            .and_then(|q| self.queue_events.get(q))
                        {
                            let _ = fd.read();
                        }
                    }
                }
            }
            if let Err(e) = self.process_queues() {
                tracing::error!("vsock: {e}; the device stops serving the guest");
                return self.model;
            }
        }
    }

    /// tx first (it may queue replies), then rx; again while tx waited for reply room that
    /// rx has since made.
    fn process_queues(&mut self) -> Result<(), ModelError> {
        let (rx, tx) = (usize::from(RX_QUEUE), usize::from(TX_QUEUE));
        loop {
            let mut notify_tx = false;
            let mut notify_rx = false;
            if let Some(q) = self.queues.get_mut(tx) {
                notify_tx = self.model.process_tx(q, &self.mem)?;
            }
            let tx_stalled = !self.model.muxer().can_accept_tx();
            if let Some(q) = self.queues.get_mut(rx) {
                notify_rx = self.model.process_rx(q, &self.mem)?;
            }
            if notify_tx {
                self.signal(TX_QUEUE);
            }
            if notify_rx {
                self.signal(RX_QUEUE);
            }
            if !(tx_stalled && self.model.muxer().can_accept_tx()) {
                return Ok(());
            }
        }
    }

    fn signal(&self, queue: u16) {
        if let Err(e) = self.interrupt.signal_used_queue(queue) {
            tracing::warn!("vsock: cannot signal queue {queue}: {e}");
        }
    }
}
