//! A small polling virtio-blk driver over virtio-mmio (virtio v1.2, 4.2.3
//! "MMIO-specific Initialization", 5.2 "Block Device").
//!
//! Why our own and not the `virtio-drivers` crate: a kernel that jumps
//! away and comes back (or is restored from a hibernation image) must put
//! the device back exactly as it left it, queue addresses and ring indices
//! included, and that crate owns its queues and hides their indices; it
//! also wants a DMA allocator and `alloc`, which this kernel does not have.
//! The driver needs a handful of register accesses per request (ring 0 is
//! emulated slowly here; the data itself is moved by the VMM), so it stays
//! this small: one queue of [`QSIZE`] descriptors in one page, one request
//! in flight, completion found by polling the used ring (no interrupts: the
//! kernels run with them off).
//!
//! The device is found where the command line says
//! (`virtio_mmio.device=<size>@<base>:<irq>`, as Linux's `virtio_mmio`
//! reads it); the numbers are `kjump_abi::virtio`, which the VMM's device
//! model compiles too.

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use kjump_abi::layout::PAGE_SIZE;
use kjump_abi::virtio::{
    BLK_HEADER_SIZE, BLK_S_OK, BLK_T_FLUSH, BLK_T_IN, BLK_T_OUT, DESC_F_NEXT, DESC_F_WRITE,
    DEVICE_ID_BLOCK, F_VERSION_1, MAGIC, MmioDevice, SECTOR_SIZE, VERSION, reg, status,
};

use crate::{mem, paging};

/// Descriptors in the queue: a request takes three (header, data, status).
pub const QSIZE: u16 = 4;

/// Where the parts of the queue page are (each within the page).
const DESC_OFF: u64 = 0x000;
const AVAIL_OFF: u64 = 0x100;
const USED_OFF: u64 = 0x200;
const HEADER_OFF: u64 = 0x400;
const STATUS_OFF: u64 = 0x440;

/// How often the used ring is polled before a request is declared lost
/// (the VMM completes a request before the notify returns).
const POLL_LIMIT: u32 = 1_000_000;

/// Why the device could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioError {
    /// The command line's window is not mapped uncached by the kernel.
    NotMapped(u64),
    BadMagic(u32),
    BadVersion(u32),
    NotBlock(u32),
    /// The device cleared FEATURES_OK: it does not take VERSION_1.
    FeaturesRefused,
    /// Queue 0 is already live or offers too few descriptors.
    Queue {
        max: u32,
    },
    NoMemory,
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    /// The request's status byte was not OK.
    Status(u8),
    /// The used ring did not move.
    Timeout,
    /// The device asks to be reset (it found the driver's rings broken).
    NeedsReset,
}

impl fmt::Display for VirtioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMapped(a) => write!(f, "the register window {a:#x} is not mapped uncached"),
            Self::BadMagic(m) => write!(f, "magic {m:#x}, not \"virt\""),
            Self::BadVersion(v) => write!(f, "virtio-mmio version {v}, not {VERSION}"),
            Self::NotBlock(d) => write!(f, "device id {d}, not a block device"),
            Self::FeaturesRefused => write!(f, "the device refused VERSION_1"),
            Self::Queue { max } => write!(f, "queue 0 unusable (max size {max})"),
            Self::NoMemory => write!(f, "no page for the queue"),
            Self::OutOfRange {
                sector,
                count,
                capacity,
            } => write!(
                f,
                "{count} sectors at {sector} are beyond the disk's {capacity}"
            ),
            Self::Status(s) => write!(f, "request status {s}"),
            Self::Timeout => write!(f, "the request was not completed"),
            Self::NeedsReset => write!(f, "the device needs a reset"),
        }
    }
}

/// The driven device.
pub struct Blk {
    base: u64,
    /// The queue page (descriptors, rings, request header and status).
    page: u64,
    /// Our next available-ring index.
    avail_idx: u16,
    /// Disk size in sectors.
    capacity: u64,
}

fn read32(addr: u64) -> u32 {
    // SAFETY: `addr` is a register of the device window, which `Blk::init`
    // checked is mapped uncached; a volatile read has no side effect on
    // kernel memory.
    unsafe { (addr as *const u32).read_volatile() }
}

fn write32(addr: u64, v: u32) {
    // SAFETY: as in `read32`: a device register, mapped uncached.
    unsafe { (addr as *mut u32).write_volatile(v) }
}

/// Writes `v` at `addr` in the queue page.
fn put<T: Copy>(addr: u64, v: T) {
    // SAFETY: `addr` is inside the queue page (offsets are constants within
    // it), which the driver owns (from `mem::alloc_pages`) and which is
    // identity-mapped; the fields are naturally aligned.
    unsafe { (addr as *mut T).write_volatile(v) }
}

/// Reads a `T` at `addr` in the queue page (the device writes there).
fn get<T: Copy>(addr: u64) -> T {
    // SAFETY: as in `put`.
    unsafe { (addr as *const T).read_volatile() }
}

/// Resets the device whose window is at `base` (status 0: it stops using
/// any queue), as a driver quiesces it before the machine is saved.
pub fn reset(base: u64) -> Result<(), VirtioError> {
    if !paging::maps_uncached(base) {
        return Err(VirtioError::NotMapped(base));
    }
    write32(base + reg::STATUS, 0);
    Ok(())
}

impl Blk {
    /// Finds the device the command line announces and initializes it;
    /// `None` when none is announced.
    pub fn probe(cmdline: &str) -> Option<Result<Self, VirtioError>> {
        MmioDevice::from_cmdline(cmdline).map(|d| Self::init(d.base))
    }

    /// The driver's initialization sequence (virtio v1.2, 3.1.1): reset,
    /// ACKNOWLEDGE, DRIVER, features (VERSION_1 only), FEATURES_OK, queue
    /// 0, DRIVER_OK.
    pub fn init(base: u64) -> Result<Self, VirtioError> {
        if !paging::maps_uncached(base) {
            return Err(VirtioError::NotMapped(base));
        }
        let r = |off| read32(base + off);
        let w = |off, v| write32(base + off, v);
        match (r(reg::MAGIC_VALUE), r(reg::VERSION), r(reg::DEVICE_ID)) {
            (m, _, _) if m != MAGIC => return Err(VirtioError::BadMagic(m)),
            (_, v, _) if v != VERSION => return Err(VirtioError::BadVersion(v)),
            (_, _, d) if d != DEVICE_ID_BLOCK => return Err(VirtioError::NotBlock(d)),
            _ => {}
        }
        w(reg::STATUS, 0);
        w(reg::STATUS, status::ACKNOWLEDGE);
        w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(reg::DEVICE_FEATURES_SEL, 1);
        if u64::from(r(reg::DEVICE_FEATURES)) << 32 & F_VERSION_1 == 0 {
            return Err(VirtioError::FeaturesRefused);
        }
        w(reg::DRIVER_FEATURES_SEL, 1);
        w(reg::DRIVER_FEATURES, (F_VERSION_1 >> 32) as u32);
        w(reg::DRIVER_FEATURES_SEL, 0);
        w(reg::DRIVER_FEATURES, 0);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(reg::STATUS, s);
        if r(reg::STATUS) & status::FEATURES_OK == 0 {
            w(reg::STATUS, status::FAILED);
            return Err(VirtioError::FeaturesRefused);
        }
        w(reg::QUEUE_SEL, 0);
        let max = r(reg::QUEUE_NUM_MAX);
        if r(reg::QUEUE_READY) != 0 || max < u32::from(QSIZE) {
            w(reg::STATUS, status::FAILED);
            return Err(VirtioError::Queue { max });
        }
        let page = mem::alloc_pages(1, u64::MAX, (0, 0)).ok_or(VirtioError::NoMemory)?;
        const { assert!(STATUS_OFF < PAGE_SIZE) };
        w(reg::QUEUE_NUM, u32::from(QSIZE));
        let split = |a: u64| (a as u32, (a >> 32) as u32);
        for (lo, hi, addr) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, page + DESC_OFF),
            (
                reg::QUEUE_DRIVER_LOW,
                reg::QUEUE_DRIVER_HIGH,
                page + AVAIL_OFF,
            ),
            (
                reg::QUEUE_DEVICE_LOW,
                reg::QUEUE_DEVICE_HIGH,
                page + USED_OFF,
            ),
        ] {
            let (l, h) = split(addr);
            w(lo, l);
            w(hi, h);
        }
        w(reg::QUEUE_READY, 1);
        w(reg::STATUS, s | status::DRIVER_OK);
        let capacity = u64::from(r(reg::CONFIG)) | (u64::from(r(reg::CONFIG + 4)) << 32);
        Ok(Self {
            base,
            page,
            avail_idx: 0,
            capacity,
        })
    }

    /// Disk size in sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Reads `buf.len()` bytes (whole sectors) from `sector` on.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), VirtioError> {
        self.request(BLK_T_IN, sector, buf.as_mut_ptr() as u64, buf.len())
    }

    /// Writes `buf` (whole sectors) from `sector` on.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), VirtioError> {
        self.request(BLK_T_OUT, sector, buf.as_ptr() as u64, buf.len())
    }

    /// Writes `len` bytes (whole sectors) of physical memory from `addr`
    /// to the disk from `sector` on: the device reads the memory itself,
    /// so the driver never touches it (another kernel's memory, say).
    pub fn write_phys(&mut self, sector: u64, addr: u64, len: usize) -> Result<(), VirtioError> {
        self.request(BLK_T_OUT, sector, addr, len)
    }

    /// Reads `len` bytes (whole sectors) from `sector` on into physical
    /// memory at `addr`: the device writes the memory itself (another
    /// kernel's, say, being restored).
    pub fn read_phys(&mut self, sector: u64, addr: u64, len: usize) -> Result<(), VirtioError> {
        self.request(BLK_T_IN, sector, addr, len)
    }

    /// Asks the device to make what was written durable.
    pub fn flush(&mut self) -> Result<(), VirtioError> {
        self.request(BLK_T_FLUSH, 0, 0, 0)
    }

    /// One request: header, data (when `len` > 0), status; the buffers are
    /// kernel memory, identity-mapped, so their addresses are physical.
    fn request(&mut self, kind: u32, sector: u64, buf: u64, len: usize) -> Result<(), VirtioError> {
        let count = len as u64 / SECTOR_SIZE;
        if !(len as u64).is_multiple_of(SECTOR_SIZE)
            || sector
                .checked_add(count)
                .is_none_or(|end| end > self.capacity)
        {
            return Err(VirtioError::OutOfRange {
                sector,
                count,
                capacity: self.capacity,
            });
        }
        let p = self.page;
        put(p + HEADER_OFF, kind);
        put(p + HEADER_OFF + 4, 0u32);
        put(p + HEADER_OFF + 8, sector);
        put(p + STATUS_OFF, 0xffu8);
        let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let d = p + DESC_OFF + i * 16;
            put(d, addr);
            put(d + 8, len);
            put(d + 12, flags);
            put(d + 14, next);
        };
        // Header, data (none for a flush), status: one chain from 0.
        desc(0, p + HEADER_OFF, BLK_HEADER_SIZE, DESC_F_NEXT, 1);
        let status_desc: u16 = if len > 0 {
            let flags = DESC_F_NEXT | if kind == BLK_T_IN { DESC_F_WRITE } else { 0 };
            desc(1, buf, len as u32, flags, 2);
            2
        } else {
            1
        };
        desc(status_desc.into(), p + STATUS_OFF, 1, DESC_F_WRITE, 0);

        let slot = u64::from(self.avail_idx % QSIZE);
        put(p + AVAIL_OFF + 4 + slot * 2, 0u16);
        // The descriptors and the ring entry before the index that
        // publishes them, and the index before the notify.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        put(p + AVAIL_OFF + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        write32(self.base + reg::QUEUE_NOTIFY, 0);

        let mut polls = 0;
        while get::<u16>(p + USED_OFF + 2) != self.avail_idx {
            if read32(self.base + reg::STATUS) & status::DEVICE_NEEDS_RESET != 0 {
                return Err(VirtioError::NeedsReset);
            }
            polls += 1;
            if polls == POLL_LIMIT {
                return Err(VirtioError::Timeout);
            }
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        // The device's "used buffer" notification, acknowledged so that
        // the device's state does not depend on how many requests ran.
        let isr = read32(self.base + reg::INTERRUPT_STATUS);
        write32(self.base + reg::INTERRUPT_ACK, isr);
        match get::<u8>(p + STATUS_OFF) {
            BLK_S_OK => Ok(()),
            s => Err(VirtioError::Status(s)),
        }
    }
}
