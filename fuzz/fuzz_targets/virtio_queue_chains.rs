//! The device models walking descriptor chains a hostile driver wrote: the fuzz input is the
//! guest's memory (descriptor table, avail and used rings, buffers) and the queue size; block,
//! rng and vsock (tx) each process the queue. Any panic, hang or out-of-bounds access is a bug.
//! Seeds (`fuzz/seeds/virtio_queue_chains/`): valid block IN/OUT/GET_ID, rng and vsock
//! REQUEST/RW chains in this memory layout, for the fuzzer to mutate from.
#![no_main]

use std::sync::{Mutex, OnceLock};

use husk_vmm::devices::virtio::block::BlockCore;
use husk_vmm::devices::virtio::rng::RngCore;
use husk_vmm::devices::virtio::vsock::VsockModel;
use husk_vmm::devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x10000;
// Rings first and compact, so short inputs reach them: avail ring (≤ 518 bytes for 256
// entries; not at 0, which virtio-queue reads as "not set up"), then the descriptor table (16
// bytes an entry), then the used ring; buffers point anywhere in (or outside) the 64 KiB.
const AVAIL: u64 = 0x10;
const DESC: u64 = 0x240;
const USED: u64 = 0x1240;

fn queue(size_selector: u8) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    // Any power of two up to 256 (the transport refuses others before a model sees them).
    q.set_size(1u16 << (size_selector % 9));
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    Some(q)
}

fn block() -> &'static Mutex<BlockCore> {
    static B: OnceLock<Mutex<BlockCore>> = OnceLock::new();
    B.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("husk-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 64 * 1024]).expect("fuzz disk");
        Mutex::new(BlockCore::open(&path, false, Some("fuzz")).expect("block core"))
    })
}

fn vsock() -> &'static Mutex<VsockModel> {
    static V: OnceLock<Mutex<VsockModel>> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("husk-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        Mutex::new(VsockModel::new(&dir.join("v.sock"), 3).expect("vsock model"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, image)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let image = &image[..image.len().min(MEM)];
    mem.write_slice(image, GuestAddress(0)).expect("image");
    if let Some(mut q) = queue(selector) {
        let _ = block().lock().unwrap().process_queue(&mut q, 0, &mem);
    }
    if let Some(mut q) = queue(selector) {
        let _ = RngCore.process_queue(&mut q, 0, &mem);
    }
    if let Some(mut q) = queue(selector) {
        let mut v = vsock().lock().unwrap();
        let _ = v.process_tx(&mut q, &mem);
        // Anything the guest's packets produced goes back through an rx queue in the same memory.
        if let Some(mut rx) = queue(selector.wrapping_add(3)) {
            let _ = v.process_rx(&mut rx, &mem);
        }
    }
});
