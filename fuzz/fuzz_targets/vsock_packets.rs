//! vsock input from both sides: the 44-byte packet header a guest writes (parsed from a
//! single-descriptor tx chain and fed to the connection state machine through the model), and
//! the `CONNECT <port>` line any host process can send to the hybrid socket.
#![no_main]

use std::sync::{Mutex, OnceLock};

use husk_vmm::devices::virtio::vsock::packet::{Header, HEADER_SIZE};
use husk_vmm::devices::virtio::vsock::unix::parse_connect;
use husk_vmm::devices::virtio::vsock::VsockModel;
use husk_vmm::devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

fn model() -> &'static Mutex<VsockModel> {
    static V: OnceLock<Mutex<VsockModel>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("husk-fuzz-pkt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        Mutex::new(VsockModel::new(&dir.join("v.sock"), 3).expect("vsock model"))
    })
}

/// A ready 2-entry queue at fixed addresses.
fn queue() -> Queue {
    let mut q = Queue::new(2).expect("queue");
    q.set_size(2);
    q.set_desc_table_address(Some(0x1000), Some(0));
    q.set_avail_ring_address(Some(0x2000), Some(0));
    q.set_used_ring_address(Some(0x3000), Some(0));
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_connect(data);
    if data.len() < HEADER_SIZE {
        return;
    }
    let mut raw = [0u8; HEADER_SIZE];
    raw.copy_from_slice(&data[..HEADER_SIZE]);
    let hdr = Header::from_bytes(&raw);
    assert_eq!(Header::from_bytes(&hdr.to_bytes()).to_bytes(), hdr.to_bytes());

    // One tx packet: header and payload in a single readable descriptor at 0x4000.
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).expect("memory");
    let body = &data[..data.len().min(0x10000)];
    mem.write_slice(body, GuestAddress(0x4000)).expect("packet");
    let mut desc = [0u8; 16];
    desc[0..8].copy_from_slice(&0x4000u64.to_le_bytes());
    desc[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    mem.write_slice(&desc, GuestAddress(0x1000)).expect("desc");
    mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(0x2000))
        .expect("avail");
    let mut m = model().lock().unwrap();
    let _ = m.process_tx(&mut queue(), &mem);
    let _ = m.process_muxer_events();
});
