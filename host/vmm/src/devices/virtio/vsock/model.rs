//! The vsock queue-processing core, shared by both transports: the virtio-mmio worker
//! ([`super::event_handler`]) and the vhost-user back end ([`crate::vhost_user::vsock`]).
//!
//! Given a `virtio_queue::Queue` and guest memory, [`VsockModel::process_tx`] takes the
//! driver's packets to the muxer and [`VsockModel::process_rx`] fills the driver's buffers with
//! what the muxer has for the guest; both say whether the driver needs an interrupt. The
//! transport owns waiting (epoll on kicks and on [`VsockModel::as_raw_fd`]) and signalling.
//!
//! Must never signal, block or own a thread; a bad chain is logged, returned to the driver
//! unused and never stops the queue.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::packet::{read_tx, RxBuffer};
use super::unix::{Muxer, MuxerError};
use crate::devices::virtio::GuestMemoryMmap;

/// Why a queue could not be processed (the queue itself is broken, not one chain).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("vsock {queue} queue: {source}")]
    Queue {
        queue: &'static str,
        #[source]
        source: virtio_queue::Error,
    },
}

/// The vsock device's behaviour: the muxer and the queue processing around it.
#[derive(Debug)]
pub struct VsockModel {
    muxer: Muxer,
}

impl VsockModel {
    /// Starts listening on `uds_path` for the guest `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        Ok(Self {
            muxer: Muxer::new(uds_path, guest_cid)?,
        })
    }

    /// The guest's context id (the device's config space).
    pub fn guest_cid(&self) -> u64 {
        self.muxer.guest_cid()
    }

    /// The config space: `guest_cid` as a little-endian u64 (virtio 1.2 §5.10.4).
    pub fn config(&self) -> [u8; 8] {
        self.guest_cid().to_le_bytes()
    }

    /// The muxer, for tests and diagnostics.
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Handles ready host sockets (call when [`Self::as_raw_fd`] is readable).
    pub fn process_muxer_events(&mut self) {
        self.muxer.process_events();
    }

    /// Drops every connection (device reset); the host listener stays.
    pub fn reset(&mut self) {
        self.muxer.reset();
    }

    /// Whether the muxer has packets for the guest waiting for rx buffers.
    pub fn has_pending_rx(&self) -> bool {
        self.muxer.has_pending_rx()
    }

    /// Takes every packet the driver put on the tx queue (until the muxer's reply queue is
    /// full); returns whether the driver needs an interrupt.
    pub fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, ModelError> {
        let qerr = |source| ModelError::Queue {
            queue: "tx",
            source,
        };
        let mut used = false;
        while self.muxer.can_accept_tx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx(mem, chain) {
                Ok(pkt) => self.muxer.send_pkt(pkt),
                Err(e) => tracing::debug!("dropping a tx packet: {e}"),
            }
            queue.add_used(mem, head, 0).map_err(qerr)?;
            used = true;
        }
        if !used {
            return Ok(false);
        }
        queue.needs_notification(mem).map_err(qerr)
    }

    /// Fills the driver's rx buffers with what the muxer has; returns whether the driver
    /// needs an interrupt.
    pub fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, ModelError> {
        let qerr = |source| ModelError::Queue {
            queue: "rx",
            source,
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let buf = match RxBuffer::new(mem, chain) {
                Ok(buf) => buf,
                Err(e) => {
                    tracing::debug!("dropping an rx buffer: {e}");
                    queue.add_used(mem, head, 0).map_err(qerr)?;
                    used = true;
                    continue;
                }
            };
            let Some(pkt) = self.muxer.recv_pkt(buf.data_capacity()) else {
                // Nothing after all (e.g. the host socket had no data): the buffer stays.
                queue.go_to_previous_position();
                break;
            };
            let len = match buf.write(&pkt) {
                Ok(len) => len,
                Err(e) => {
                    tracing::debug!("lost a packet for the guest: {e}");
                    0
                }
            };
            queue.add_used(mem, head, len).map_err(qerr)?;
            used = true;
        }
        if !used {
            return Ok(false);
        }
        queue.needs_notification(mem).map_err(qerr)
    }
}

impl AsRawFd for VsockModel {
    /// Readable when host sockets have work for [`VsockModel::process_muxer_events`].
    fn as_raw_fd(&self) -> RawFd {
        self.muxer.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::super::packet::tests::{desc, test_mem};
    use super::super::packet::{
        Header, HEADER_SIZE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM,
    };
    use super::super::HOST_CID;
    use super::*;

    const CID: u64 = 3;

    fn guest_header(op: u16, src: u32, dst: u32, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    fn used_len(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> u32 {
        mem.read_obj(vq.used_addr().unchecked_add(4 + 8 * i + 4))
            .unwrap()
    }

    fn used_idx(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap()
    }

    #[test]
    fn hostile_tx_chains_are_consumed_and_good_ones_served() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut model = VsockModel::new(&uds, CID).unwrap();
        let mem = test_mem();
        let tx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        // A REQUEST to a port nobody listens on, after three broken chains.
        let req = guest_header(OP_REQUEST, 999, 52, 0);
        mem.write_slice(&req.to_bytes(), GuestAddress(0x10000))
            .unwrap();
        let bad_len = guest_header(OP_RW, 999, 52, 1000);
        mem.write_slice(&bad_len.to_bytes(), GuestAddress(0x11000))
            .unwrap();
        tx.add_desc_chains(
            &[
                desc(0x10000, 0, false),
                desc(0x10000, 64, true),
                desc(0x11000, HEADER_SIZE as u32, false),
                desc(0x10000, HEADER_SIZE as u32, false),
            ],
            0,
        )
        .unwrap();
        let mut txq: Queue = tx.create_queue().unwrap();
        assert!(model.process_tx(&mut txq, &mem).unwrap());
        assert_eq!(
            used_idx(&mem, &tx),
            4,
            "every chain went back to the driver"
        );
        // One RST for the REQUEST; a read-only rx buffer is dropped, the next one is used.
        rx.add_desc_chains(&[desc(0x20000, 4096, false), desc(0x21000, 4096, true)], 0)
            .unwrap();
        let mut rxq: Queue = rx.create_queue().unwrap();
        assert!(model.process_rx(&mut rxq, &mem).unwrap());
        assert_eq!(used_idx(&mem, &rx), 2);
        assert_eq!(used_len(&mem, &rx, 0), 0);
        assert_eq!(used_len(&mem, &rx, 1), HEADER_SIZE as u32);
        let mut raw = [0u8; HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x21000)).unwrap();
        let rst = Header::from_bytes(&raw);
        assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 52, 999));
        assert!(!model.has_pending_rx());
    }

    #[test]
    fn a_host_connect_goes_through_both_queues() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut model = VsockModel::new(&uds, CID).unwrap();
        assert_eq!(model.config(), [3, 0, 0, 0, 0, 0, 0, 0]);
        let mem = test_mem();
        let tx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let mut txq: Queue = tx.create_queue().unwrap();
        let mut rxq: Queue = rx.create_queue().unwrap();
        let mut client = UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        // Until the muxer has read the line there is nothing for the guest.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !model.has_pending_rx() {
            model.process_muxer_events();
            assert!(std::time::Instant::now() < deadline);
        }
        // No rx buffer yet: nothing happens, the REQUEST waits.
        assert!(!model.process_rx(&mut rxq, &mem).unwrap());
        rx.add_desc_chains(&[desc(0x20000, 4096, true)], 0).unwrap();
        assert!(model.process_rx(&mut rxq, &mem).unwrap());
        let mut raw = [0u8; HEADER_SIZE];
        mem.read_slice(&mut raw, GuestAddress(0x20000)).unwrap();
        let req = Header::from_bytes(&raw);
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, 1024));
        // The guest accepts and sends data.
        let resp = guest_header(OP_RESPONSE, 1024, req.src_port, 0);
        mem.write_slice(&resp.to_bytes(), GuestAddress(0x30000))
            .unwrap();
        let rw = guest_header(OP_RW, 1024, req.src_port, 2);
        mem.write_slice(&rw.to_bytes(), GuestAddress(0x31000))
            .unwrap();
        mem.write_slice(b"hi", GuestAddress(0x32000)).unwrap();
        // Two chains: the RESPONSE, then the RW with its header and payload apart.
        let next = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
        tx.add_desc_chains(
            &[
                desc(0x30000, HEADER_SIZE as u32, false),
                RawDescriptor::from(SplitDescriptor::new(0x31000, HEADER_SIZE as u32, next, 2)),
                desc(0x32000, 2, false),
            ],
            0,
        )
        .unwrap();
        assert!(model.process_tx(&mut txq, &mem).unwrap());
        assert_eq!(used_idx(&mem, &tx), 2);
        let mut line = [0u8; 16];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = client.read(&mut line).unwrap();
        let expect = format!("OK {}\nhi", req.src_port);
        let mut got = line[..n].to_vec();
        while got.len() < expect.len() {
            let n = client.read(&mut line).unwrap();
            got.extend_from_slice(&line[..n]);
        }
        assert_eq!(String::from_utf8(got).unwrap(), expect);
    }
}
