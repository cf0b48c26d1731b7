//! virtio-blk over virtio-mmio, backed by a raw host file.
//!
//! The device model is plain code over a `GuestMemory` and a file: the run
//! loop hands it the vCPU's MMIO exits in its register window
//! ([`VirtioBlk::mmio_read`], [`VirtioBlk::mmio_write`]), and it serves the
//! request queue synchronously when the driver writes `QueueNotify`, so a
//! request is complete (used ring written, `InterruptStatus` bit 0 set)
//! when the guest's notify instruction retires. No interrupt line is
//! raised: the kjump driver polls the used ring (a kernel that jumps away
//! has its interrupts off anyway). The rings are rust-vmm's `virtio-queue`;
//! the register numbers are `kjump_abi::virtio` (the guest driver compiles
//! the same), checked against `virtio-bindings` in the tests.
//!
//! The device's guest-visible state is a [`VirtioBlkState`] value: captured
//! into the `MachineState` at every checkpoint and compared by the oracle
//! (`virtio_blk.status`, `virtio_blk.queue0.next_avail`, ...).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use kjump_abi::virtio::{
    BLK_F_FLUSH, BLK_HEADER_SIZE, BLK_S_IOERR, BLK_S_OK, BLK_S_UNSUPP, BLK_T_FLUSH, BLK_T_IN,
    BLK_T_OUT, DEVICE_ID_BLOCK, F_VERSION_1, MAGIC, QUEUE_MAX, SECTOR_SIZE, VENDOR_ID, VERSION,
    reg, status,
};
use kjump_core::virtio::{VirtioBlkState, VirtqueueState};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::{Bytes, GuestMemory};

/// The features the device offers: a virtio 1.x block device that takes
/// flushes.
pub const DEVICE_FEATURES: u64 = F_VERSION_1 | BLK_F_FLUSH;

/// Largest data transfer of one request the device accepts (bounds the
/// host buffer a guest can make it allocate).
const MAX_TRANSFER: u64 = 64 << 20;

/// Why the device could not be set up or restored.
#[derive(Debug, thiserror::Error)]
pub enum VirtioBlkError {
    /// The disk file's size could not be read.
    #[error("cannot read the size of the disk file")]
    Size(#[source] io::Error),
    /// The disk is not a whole number of sectors.
    #[error("the disk file is {0} bytes, not a multiple of 512")]
    NotSectors(u64),
    /// A saved queue state that virtio-queue refuses.
    #[error("the saved virtqueue state is invalid: {0:?}")]
    Queue(virtio_queue::Error),
    /// A saved state of another disk.
    #[error("the saved state is of a disk of {saved} sectors, this one has {actual}")]
    Capacity { saved: u64, actual: u64 },
}

/// A request the device could not take from the queue (the driver broke
/// the protocol): the device sets `DEVICE_NEEDS_RESET` and stops serving.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the available ring or a descriptor is unusable: {0}")]
    Queue(virtio_queue::Error),
    #[error("descriptor chain {head}: {why}")]
    Chain { head: u16, why: &'static str },
    #[error("descriptor chain {head}: guest memory at {addr:#x} is not RAM")]
    Memory { head: u16, addr: u64 },
}

/// The virtio-blk device.
pub struct VirtioBlk {
    disk: File,
    /// Disk size in sectors.
    capacity: u64,
    status: u32,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    queue: Queue,
    /// Requests served, for the log.
    served: u64,
}

impl VirtioBlk {
    /// A reset device over `disk`, whose size (a multiple of 512) is the
    /// disk's capacity.
    pub fn new(disk: File) -> Result<Self, VirtioBlkError> {
        let len = disk.metadata().map_err(VirtioBlkError::Size)?.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(VirtioBlkError::NotSectors(len));
        }
        Ok(Self {
            disk,
            capacity: len / SECTOR_SIZE,
            status: 0,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            queue: Queue::new(QUEUE_MAX).expect("QUEUE_MAX is a power of two"),
            served: 0,
        })
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The guest-visible state.
    pub fn state(&self) -> VirtioBlkState {
        let q = self.queue.state();
        VirtioBlkState {
            status: self.status,
            device_features: DEVICE_FEATURES,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            capacity: self.capacity,
            queues: vec![VirtqueueState {
                max_size: q.max_size,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx: q.event_idx_enabled,
            }],
        }
    }

    /// Puts a saved state back (a dump's resume). The disk must be the
    /// same size.
    pub fn set_state(&mut self, s: &VirtioBlkState) -> Result<(), VirtioBlkError> {
        if s.capacity != self.capacity {
            return Err(VirtioBlkError::Capacity {
                saved: s.capacity,
                actual: self.capacity,
            });
        }
        let q = s.queues.first().copied().unwrap_or_default();
        let queue = Queue::try_from(QueueState {
            max_size: QUEUE_MAX,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: if q.size == 0 { QUEUE_MAX } else { q.size },
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        })
        .map_err(VirtioBlkError::Queue)?;
        self.queue = queue;
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.interrupt_status = s.interrupt_status;
        self.config_generation = s.config_generation;
        Ok(())
    }

    /// A read of `data.len()` bytes at `offset` in the register window.
    /// Registers are 32 bits wide and read whole; the config space may be
    /// read in any width. Anything else reads as zeros.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            let config = self.capacity.to_le_bytes();
            let start = (offset - reg::CONFIG) as usize;
            for (i, b) in data.iter_mut().enumerate() {
                if let Some(v) = config.get(start + i) {
                    *b = *v;
                }
            }
            return;
        }
        if data.len() != 4 {
            log::warn!(
                "virtio-blk: {}-byte read of register {offset:#x}",
                data.len()
            );
            return;
        }
        let half = |v: u64, sel: u32| match sel {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        let q = self.queue.state();
        let v = match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => DEVICE_ID_BLOCK,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => half(DEVICE_FEATURES, self.device_features_sel),
            reg::QUEUE_NUM_MAX if self.queue_sel == 0 => QUEUE_MAX.into(),
            reg::QUEUE_READY if self.queue_sel == 0 => q.ready.into(),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A write of `data` at `offset` in the register window; a write of
    /// `QueueNotify` serves the queue in `mem`.
    pub fn mmio_write<M: GuestMemory>(&mut self, mem: &M, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!(
                "virtio-blk: {}-byte write of register {offset:#x} ignored",
                data.len()
            );
            return;
        };
        let v = u32::from_le_bytes(bytes);
        // Queue registers apply to queue 0, the only one.
        let q0 = self.queue_sel == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32);
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if q0 => self.queue.set_size(v as u16),
            reg::QUEUE_READY if q0 => self.queue.set_ready(v == 1),
            reg::QUEUE_DESC_LOW if q0 => self.queue.set_desc_table_address(Some(v), None),
            reg::QUEUE_DESC_HIGH if q0 => self.queue.set_desc_table_address(None, Some(v)),
            reg::QUEUE_DRIVER_LOW if q0 => self.queue.set_avail_ring_address(Some(v), None),
            reg::QUEUE_DRIVER_HIGH if q0 => self.queue.set_avail_ring_address(None, Some(v)),
            reg::QUEUE_DEVICE_LOW if q0 => self.queue.set_used_ring_address(Some(v), None),
            reg::QUEUE_DEVICE_HIGH if q0 => self.queue.set_used_ring_address(None, Some(v)),
            reg::QUEUE_NOTIFY if v == 0 => self.notify(mem),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.set_status(v),
            _ => log::warn!("virtio-blk: write {v:#x} to register {offset:#x} ignored"),
        }
    }

    /// The driver's status write (virtio v1.2, 3.1.1): 0 resets the
    /// device; FEATURES_OK is kept only for features the device offers,
    /// VERSION_1 among them.
    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let ok = self.driver_features & !DEVICE_FEATURES == 0
                && self.driver_features & F_VERSION_1 != 0;
            if !ok {
                log::warn!(
                    "virtio-blk: driver features {:#x} refused (device offers {DEVICE_FEATURES:#x})",
                    self.driver_features
                );
                v &= !status::FEATURES_OK;
            }
        }
        self.status = v;
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.queue.reset();
    }

    /// Serves every available request, if the driver is ready.
    fn notify<M: GuestMemory>(&mut self, mem: &M) {
        if self.status & status::DRIVER_OK == 0 || self.status & status::DEVICE_NEEDS_RESET != 0 {
            log::warn!("virtio-blk: notify with status {:#x} ignored", self.status);
            return;
        }
        if !self.queue.is_valid(mem) {
            log::warn!("virtio-blk: notify of a queue that is not set up ignored");
            return;
        }
        if let Err(e) = self.serve(mem) {
            log::warn!("virtio-blk: {e}; the device needs a reset");
            self.status |= status::DEVICE_NEEDS_RESET;
        }
    }

    fn serve<M: GuestMemory>(&mut self, mem: &M) -> Result<(), RequestError> {
        loop {
            let chain = {
                let mut iter = self.queue.iter(mem).map_err(RequestError::Queue)?;
                match iter.next() {
                    Some(c) => c,
                    None => break,
                }
            };
            let head = chain.head_index();
            let descs: Vec<Descriptor> = chain.collect();
            let written = self.request(mem, head, &descs)?;
            self.queue
                .add_used(mem, head, written)
                .map_err(RequestError::Queue)?;
            self.interrupt_status |= 1;
            self.served += 1;
        }
        Ok(())
    }

    /// Serves one request (header, data, status byte); returns the bytes
    /// the device wrote into the driver's buffers.
    fn request<M: GuestMemory>(
        &mut self,
        mem: &M,
        head: u16,
        descs: &[Descriptor],
    ) -> Result<u32, RequestError> {
        let bad = |why| RequestError::Chain { head, why };
        let (first, rest) = descs.split_first().ok_or(bad("empty"))?;
        let (last, data) = rest.split_last().ok_or(bad("no status descriptor"))?;
        if first.is_write_only() || first.len() < BLK_HEADER_SIZE {
            return Err(bad("the header is not a readable 16-byte descriptor"));
        }
        if !last.is_write_only() || last.len() < 1 {
            return Err(bad("the status is not a writable descriptor"));
        }
        let mut header = [0u8; BLK_HEADER_SIZE as usize];
        mem.read_slice(&mut header, first.addr())
            .map_err(|_| RequestError::Memory {
                head,
                addr: first.addr().0,
            })?;
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();

        let (status, written) = match kind {
            BLK_T_IN | BLK_T_OUT => {
                let write = kind == BLK_T_OUT;
                if data.iter().any(|d| d.is_write_only() == write) {
                    return Err(bad("a data descriptor has the wrong direction"));
                }
                match self.transfer(mem, head, sector, total, data, write)? {
                    true => (BLK_S_OK, if write { 0 } else { total as u32 }),
                    false => (BLK_S_IOERR, 0),
                }
            }
            BLK_T_FLUSH => match self.disk.sync_data() {
                Ok(()) => (BLK_S_OK, 0),
                Err(e) => {
                    log::warn!("virtio-blk: flush: {e}");
                    (BLK_S_IOERR, 0)
                }
            },
            _ => (BLK_S_UNSUPP, 0),
        };
        mem.write_slice(&[status], last.addr())
            .map_err(|_| RequestError::Memory {
                head,
                addr: last.addr().0,
            })?;
        Ok(written + 1)
    }

    /// Moves `total` bytes between the disk at `sector` and the data
    /// descriptors. `false`: the request is outside the disk or the host
    /// file failed (the driver gets IOERR).
    fn transfer<M: GuestMemory>(
        &mut self,
        mem: &M,
        head: u16,
        sector: u64,
        total: u64,
        data: &[Descriptor],
        write: bool,
    ) -> Result<bool, RequestError> {
        let start = sector.checked_mul(SECTOR_SIZE);
        let in_disk = start
            .and_then(|s| s.checked_add(total))
            .is_some_and(|end| end <= self.capacity * SECTOR_SIZE);
        if !in_disk || !total.is_multiple_of(SECTOR_SIZE) || total > MAX_TRANSFER {
            log::warn!(
                "virtio-blk: request of {total} bytes at sector {sector} refused (disk of {} sectors)",
                self.capacity
            );
            return Ok(false);
        }
        let mut pos = sector * SECTOR_SIZE;
        let mut buf = Vec::new();
        for d in data {
            buf.resize(d.len() as usize, 0);
            let mem_err = |_| RequestError::Memory {
                head,
                addr: d.addr().0,
            };
            let io = if write {
                mem.read_slice(&mut buf, d.addr()).map_err(mem_err)?;
                self.disk.write_all_at(&buf, pos)
            } else {
                let r = self.disk.read_exact_at(&mut buf, pos);
                if r.is_ok() {
                    mem.write_slice(&buf, d.addr()).map_err(mem_err)?;
                }
                r
            };
            if let Err(e) = io {
                log::warn!("virtio-blk: disk file at byte {pos}: {e}");
                return Ok(false);
            }
            pos += u64::from(d.len());
        }
        Ok(true)
    }

    /// Requests served since the device was made.
    pub fn served(&self) -> u64 {
        self.served
    }
}

/// True when `addr` is in the register window at `base` of `size` bytes;
/// then the offset.
pub fn window_offset(base: u64, size: u64, addr: u64) -> Option<u64> {
    addr.checked_sub(base).filter(|o| *o < size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kjump_abi::virtio::{DESC_F_NEXT, DESC_F_WRITE};
    use std::io::{Read, Seek, SeekFrom};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    type Mem = GuestMemoryMmap<()>;

    fn ga(a: u64) -> GuestAddress {
        GuestAddress(a)
    }

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const HEADER: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS: u64 = 0x8000;
    const QSIZE: u16 = 8;

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn disk(sectors: u64) -> File {
        let f = tempfile();
        f.set_len(sectors * SECTOR_SIZE).unwrap();
        f
    }

    fn tempfile() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "kjump-virtio-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn rd(dev: &mut VirtioBlk, off: u64) -> u32 {
        let mut d = [0u8; 4];
        dev.mmio_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(dev: &mut VirtioBlk, m: &Mem, off: u64, v: u32) {
        dev.mmio_write(m, off, &v.to_le_bytes());
    }

    /// The driver's initialization (virtio v1.2, 3.1.1), as the guest does it.
    fn driver_init(dev: &mut VirtioBlk, m: &Mem) {
        wr(dev, m, reg::STATUS, 0);
        wr(dev, m, reg::STATUS, status::ACKNOWLEDGE);
        wr(dev, m, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(dev, m, reg::DRIVER_FEATURES_SEL, 1);
        wr(dev, m, reg::DRIVER_FEATURES, 1); // VERSION_1
        wr(dev, m, reg::DRIVER_FEATURES_SEL, 0);
        wr(dev, m, reg::DRIVER_FEATURES, 0);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(dev, m, reg::STATUS, s);
        assert_eq!(rd(dev, reg::STATUS), s);
        wr(dev, m, reg::QUEUE_SEL, 0);
        assert_eq!(rd(dev, reg::QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
        wr(dev, m, reg::QUEUE_NUM, QSIZE.into());
        wr(dev, m, reg::QUEUE_DESC_LOW, DESC as u32);
        wr(dev, m, reg::QUEUE_DESC_HIGH, 0);
        wr(dev, m, reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        wr(dev, m, reg::QUEUE_DRIVER_HIGH, 0);
        wr(dev, m, reg::QUEUE_DEVICE_LOW, USED as u32);
        wr(dev, m, reg::QUEUE_DEVICE_HIGH, 0);
        wr(dev, m, reg::QUEUE_READY, 1);
        wr(dev, m, reg::STATUS, s | status::DRIVER_OK);
    }

    fn put_desc(m: &Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = DESC + u64::from(i) * 16;
        m.write_obj(addr, ga(at)).unwrap();
        m.write_obj(len, ga(at + 8)).unwrap();
        m.write_obj(flags, ga(at + 12)).unwrap();
        m.write_obj(next, ga(at + 14)).unwrap();
    }

    /// Queues one request of `kind` at `sector` over `len` data bytes at
    /// DATA, as the `n`-th request; notifies; returns the status byte.
    fn request(dev: &mut VirtioBlk, m: &Mem, n: u16, kind: u32, sector: u64, len: u32) -> u8 {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&header, ga(HEADER)).unwrap();
        m.write_obj(0xffu8, ga(STATUS)).unwrap();
        let data_flags = DESC_F_NEXT | if kind == BLK_T_IN { DESC_F_WRITE } else { 0 };
        put_desc(m, 0, HEADER, 16, DESC_F_NEXT, 1);
        put_desc(m, 1, DATA, len, data_flags, 2);
        put_desc(m, 2, STATUS, 1, DESC_F_WRITE, 0);
        let slot = u64::from(n % QSIZE);
        m.write_obj(0u16, ga(AVAIL + 4 + slot * 2)).unwrap();
        m.write_obj(n.wrapping_add(1), ga(AVAIL + 2)).unwrap();
        wr(dev, m, reg::QUEUE_NOTIFY, 0);
        let used_idx: u16 = m.read_obj(ga(USED + 2)).unwrap();
        assert_eq!(used_idx, n.wrapping_add(1), "request {n} not used");
        m.read_obj(ga(STATUS)).unwrap()
    }

    #[test]
    fn the_numbers_are_the_specs() {
        use virtio_bindings::{virtio_blk, virtio_config, virtio_ids, virtio_mmio};
        assert_eq!(
            reg::MAGIC_VALUE,
            u64::from(virtio_mmio::VIRTIO_MMIO_MAGIC_VALUE)
        );
        assert_eq!(reg::STATUS, u64::from(virtio_mmio::VIRTIO_MMIO_STATUS));
        assert_eq!(
            reg::QUEUE_NOTIFY,
            u64::from(virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY)
        );
        assert_eq!(
            reg::QUEUE_DEVICE_HIGH,
            u64::from(virtio_mmio::VIRTIO_MMIO_QUEUE_USED_HIGH)
        );
        assert_eq!(
            reg::QUEUE_DRIVER_LOW,
            u64::from(virtio_mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW)
        );
        assert_eq!(reg::CONFIG, u64::from(virtio_mmio::VIRTIO_MMIO_CONFIG));
        assert_eq!(
            reg::CONFIG_GENERATION,
            u64::from(virtio_mmio::VIRTIO_MMIO_CONFIG_GENERATION)
        );
        assert_eq!(DEVICE_ID_BLOCK, virtio_ids::VIRTIO_ID_BLOCK);
        assert_eq!(F_VERSION_1, 1 << virtio_config::VIRTIO_F_VERSION_1);
        assert_eq!(BLK_F_FLUSH, 1 << virtio_blk::VIRTIO_BLK_F_FLUSH);
        assert_eq!(BLK_T_OUT, virtio_blk::VIRTIO_BLK_T_OUT);
        assert_eq!(BLK_T_FLUSH, virtio_blk::VIRTIO_BLK_T_FLUSH);
        assert_eq!(u32::from(BLK_S_UNSUPP), virtio_blk::VIRTIO_BLK_S_UNSUPP);
        assert_eq!(
            status::FEATURES_OK,
            virtio_config::VIRTIO_CONFIG_S_FEATURES_OK
        );
    }

    #[test]
    fn identification_and_capacity_read_as_linux_expects() {
        let mut dev = VirtioBlk::new(disk(2048)).unwrap();
        assert_eq!(rd(&mut dev, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut dev, reg::VERSION), 2);
        assert_eq!(rd(&mut dev, reg::DEVICE_ID), 2);
        let mut cap = [0u8; 8];
        dev.mmio_read(reg::CONFIG, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
        let m = mem();
        wr(&mut dev, &m, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut dev, reg::DEVICE_FEATURES), 1);
        wr(&mut dev, &m, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut dev, reg::DEVICE_FEATURES), 1 << 9);
    }

    #[test]
    fn a_disk_that_is_not_whole_sectors_is_refused() {
        let f = tempfile();
        f.set_len(1000).unwrap();
        assert!(matches!(
            VirtioBlk::new(f),
            Err(VirtioBlkError::NotSectors(1000))
        ));
    }

    #[test]
    fn written_sectors_reach_the_file_and_read_back() {
        let m = mem();
        let mut dev = VirtioBlk::new(disk(64)).unwrap();
        driver_init(&mut dev, &m);
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        m.write_slice(&pattern, ga(DATA)).unwrap();
        assert_eq!(request(&mut dev, &m, 0, BLK_T_OUT, 5, 1024), BLK_S_OK);

        // The bytes are in the host file at sector 5.
        let mut f = dev.disk.try_clone().unwrap();
        let mut on_disk = vec![0u8; 1024];
        f.seek(SeekFrom::Start(5 * 512)).unwrap();
        f.read_exact(&mut on_disk).unwrap();
        assert_eq!(on_disk, pattern);

        m.write_slice(&vec![0u8; 1024], ga(DATA)).unwrap();
        assert_eq!(request(&mut dev, &m, 1, BLK_T_IN, 5, 1024), BLK_S_OK);
        let mut back = vec![0u8; 1024];
        m.read_slice(&mut back, ga(DATA)).unwrap();
        assert_eq!(back, pattern);
        // The used element says how much the device wrote: data + status.
        let used_len: u32 = m.read_obj(ga(USED + 4 + 8 + 4)).unwrap();
        assert_eq!(used_len, 1025);
        assert_eq!(rd(&mut dev, reg::INTERRUPT_STATUS), 1);
        wr(&mut dev, &m, reg::INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut dev, reg::INTERRUPT_STATUS), 0);

        assert_eq!(request(&mut dev, &m, 2, BLK_T_FLUSH, 0, 0), BLK_S_OK);
        assert_eq!(request(&mut dev, &m, 3, 99, 0, 512), BLK_S_UNSUPP);
        assert_eq!(dev.served(), 4);
    }

    #[test]
    fn a_request_beyond_the_disk_is_an_io_error() {
        let m = mem();
        let mut dev = VirtioBlk::new(disk(8)).unwrap();
        driver_init(&mut dev, &m);
        assert_eq!(request(&mut dev, &m, 0, BLK_T_OUT, 7, 1024), BLK_S_IOERR);
        assert_eq!(
            request(&mut dev, &m, 1, BLK_T_IN, u64::MAX, 512),
            BLK_S_IOERR
        );
        assert_eq!(request(&mut dev, &m, 2, BLK_T_IN, 7, 512), BLK_S_OK);
    }

    #[test]
    fn features_the_device_does_not_offer_are_refused() {
        let m = mem();
        let mut dev = VirtioBlk::new(disk(8)).unwrap();
        wr(
            &mut dev,
            &m,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        wr(&mut dev, &m, reg::DRIVER_FEATURES_SEL, 0);
        wr(&mut dev, &m, reg::DRIVER_FEATURES, 1 << 5); // VIRTIO_BLK_F_RO
        wr(
            &mut dev,
            &m,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(rd(&mut dev, reg::STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn a_broken_chain_sets_needs_reset_and_a_reset_clears_everything() {
        let m = mem();
        let mut dev = VirtioBlk::new(disk(8)).unwrap();
        driver_init(&mut dev, &m);
        // A chain of one descriptor: no status byte.
        put_desc(&m, 0, HEADER, 16, 0, 0);
        m.write_obj(0u16, ga(AVAIL + 4)).unwrap();
        m.write_obj(1u16, ga(AVAIL + 2)).unwrap();
        wr(&mut dev, &m, reg::QUEUE_NOTIFY, 0);
        assert_ne!(rd(&mut dev, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        wr(&mut dev, &m, reg::STATUS, 0);
        let s = dev.state();
        assert_eq!(s.status, 0);
        assert_eq!(s.driver_features, 0);
        assert!(!s.queues[0].ready);
        assert_eq!(s.queues[0].desc_table, 0);
    }

    #[test]
    fn the_state_names_what_the_driver_set_and_restores() {
        let m = mem();
        let mut dev = VirtioBlk::new(disk(16)).unwrap();
        driver_init(&mut dev, &m);
        m.write_slice(&[0xaa; 512], ga(DATA)).unwrap();
        request(&mut dev, &m, 0, BLK_T_OUT, 1, 512);
        let s = dev.state();
        assert_eq!(s.status, 0xf);
        assert_eq!(s.driver_features, F_VERSION_1);
        assert_eq!(s.capacity, 16);
        let q = s.queues[0];
        assert_eq!(
            (q.size, q.ready, q.desc_table, q.avail_ring, q.used_ring),
            (QSIZE, true, DESC, AVAIL, USED)
        );
        assert_eq!((q.next_avail, q.next_used), (1, 1));

        let mut other = VirtioBlk::new(disk(16)).unwrap();
        other.set_state(&s).unwrap();
        assert_eq!(other.state(), s);
        // And it serves on from there.
        assert_eq!(request(&mut other, &m, 1, BLK_T_IN, 1, 512), BLK_S_OK);

        let mut small = VirtioBlk::new(disk(8)).unwrap();
        assert!(matches!(
            small.set_state(&s),
            Err(VirtioBlkError::Capacity {
                saved: 16,
                actual: 8
            })
        ));
    }

    #[test]
    fn the_window_offset_is_bounded() {
        assert_eq!(window_offset(0xd000_0000, 0x1000, 0xd000_0070), Some(0x70));
        assert_eq!(window_offset(0xd000_0000, 0x1000, 0xd000_1000), None);
        assert_eq!(window_offset(0xd000_0000, 0x1000, 0xcfff_ffff), None);
    }
}
