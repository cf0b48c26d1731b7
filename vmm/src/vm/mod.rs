//! The VM: KVM, guest RAM, one vCPU, the UART and the harness port.
//!
//! [`Vm::new`] sets a VM up in the order a reader expects: check the input,
//! open KVM and check its capabilities, create the VM, allocate guest RAM and
//! register it (with dirty logging), load the guest, create the vCPU.
//! [`Vm::from_image`] builds the same VM from an image of a running one (a
//! dump's RAM and vCPU state) instead of loading a guest.
//! [`Vm::run_until_event`] then runs the guest until it says something on
//! the harness port or executes the checkpoint instruction.
//!
//! Only this module and its children ([`vcpu`], [`capture`], [`boot`],
//! [`serial`], [`watchdog`]) talk to KVM: nothing else in kjump names
//! kvm-ioctls.

pub mod boot;
pub mod capture;
pub mod debug;
pub mod devices;
mod dirty;
pub mod msr_probe;
pub mod serial;
pub mod vcpu;
pub mod virtio_blk;
pub mod watchdog;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_API_VERSION, KVM_EXIT_INTERNAL_ERROR, KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vm_superio::serial::SerialState;

use self::boot::BootInfo;
use self::dirty::DirtyLog;
use crate::vm::serial::{Console, ConsoleSink};
use kjump_core::GuestMem;
use kjump_core::dump::{DumpError, RamSource};
use kjump_core::harness::{Harness, HarnessEvent};
use kjump_core::image::BootError;
use kjump_core::layout::{self, PAGE_SIZE};
use kjump_core::state::{DeviceState, MachineState, UartState, VcpuState};

use self::capture::SnapshotError;
use self::vcpu::{ExitAction, GuestFault, PortIo, RegDump, VcpuError};
use self::virtio_blk::VirtioBlk;
use crate::faults::{DeviceField, VcpuField};
use crate::vm::watchdog::{KickGuard, StopFlag};

/// Offset of the TPR in the local APIC register page.
const LAPIC_TPR: usize = 0x80;

/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 256 << 20;
/// Default run time limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The KVM device kjump opens unless `--kvm-device` names another.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";
/// KVM's device number, 10:232 (misc device `KVM_MINOR`, Linux
/// `include/linux/miscdevice.h`).
const KVM_DEVICE_NUMBER: (u32, u32) = (10, 232);

/// What a VM is made of.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// The guest kernel, an ELF file.
    pub kernel: Vec<u8>,
    /// The initramfs (a newc cpio the guest parses), if any.
    pub initramfs: Option<Vec<u8>>,
    /// The guest command line.
    pub cmdline: String,
    /// The run's time limit (enforced by [`crate::vm::watchdog`]).
    pub timeout: Duration,
    /// Printed in front of the guest's console lines, `[a] ...`.
    pub console_name: String,
    /// Where console lines go.
    pub console: ConsoleSink,
    /// Raised by the watchdog to stop the vCPU.
    pub stop: StopFlag,
    /// Create KVM's in-kernel interrupt controllers (PIC, IOAPIC, local
    /// APIC). Off by default: without them `hlt` exits to the VMM, which
    /// reports a halted guest at once (with them the vCPU halts inside KVM
    /// until the watchdog fires), but `KVM_GET_LAPIC` then fails (EINVAL),
    /// so a snapshot has no local APIC state.
    pub irqchip: bool,
    /// The KVM device to open ([`DEFAULT_KVM_DEVICE`] unless told).
    pub kvm_device: PathBuf,
    /// The raw file behind the virtio-blk device, which the VM then has
    /// (announced on the command line by the caller: [`BLOCK_DEVICE`]).
    pub disk: Option<PathBuf>,
}

/// Where the virtio-blk device sits, as the guest's command line
/// announces it.
pub const BLOCK_DEVICE: kjump_abi::virtio::MmioDevice = kjump_abi::virtio::MmioDevice::KJUMP_BLOCK;

impl VmConfig {
    /// A VM with the default RAM and time limit, console on stdout.
    pub fn new(kernel: Vec<u8>, cmdline: impl Into<String>) -> Self {
        Self {
            mem_size: DEFAULT_MEM,
            kernel,
            initramfs: None,
            cmdline: cmdline.into(),
            timeout: DEFAULT_TIMEOUT,
            console_name: "a".into(),
            console: ConsoleSink::Stdout,
            stop: StopFlag::new(),
            irqchip: false,
            kvm_device: DEFAULT_KVM_DEVICE.into(),
            disk: None,
        }
    }
}

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    // The KVM device errors carry their cause in the message, before the
    // hint, so that the line reads in order; hence no `#[source]`.
    /// the KVM device does not exist (or has no driver behind it)
    #[error(
        "cannot open the KVM device {}: {errno}; is KVM enabled here (the kvm_intel or kvm_amd \
         module loaded, the device passed into this container)?",
        .path.display()
    )]
    KvmMissing {
        path: PathBuf,
        errno: kvm_ioctls::Error,
    },
    /// the KVM device is not accessible
    #[error(
        "no permission to open the KVM device {}: {errno}; add your user to the group that \
         owns it (usually `kvm`) and log in again, or run as root",
        .path.display()
    )]
    KvmPermission {
        path: PathBuf,
        errno: kvm_ioctls::Error,
    },
    /// the path opens, but is no KVM device
    #[error("{} is not a KVM device ({what})", .path.display())]
    NotKvm { path: PathBuf, what: String },
    /// the KVM device cannot be opened for another reason
    #[error("cannot open the KVM device {}: {errno}", .path.display())]
    KvmOpen {
        path: PathBuf,
        errno: kvm_ioctls::Error,
    },
    /// unexpected KVM API
    #[error(
        "the KVM device {} has KVM API version {version}; kjump needs {KVM_API_VERSION}",
        .path.display()
    )]
    KvmApiVersion { path: PathBuf, version: i32 },
    /// a capability is missing
    #[error("this KVM lacks {0}, which kjump needs")]
    MissingCap(&'static str),
    /// RAM size out of range
    #[error("guest RAM (--mem) of {}: {why}", mib_or_bytes(*.size))]
    RamSize { size: u64, why: String },
    /// guest RAM could not be mapped
    #[error("cannot allocate {} MiB of guest RAM", .size >> 20)]
    Memory {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// a KVM ioctl failed
    #[error("cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// the guest could not be loaded
    #[error(transparent)]
    Boot(#[from] BootError),
    /// the vCPU could not be set up
    #[error("cannot set up the vCPU")]
    Vcpu(#[from] VcpuError),
    /// KVM_RUN failed
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    /// KVM ran the guest instead of completing the checkpoint's I/O
    #[error("KVM did not complete the checkpoint I/O with immediate_exit; it exited with {0}")]
    CompleteIo(String),
    /// the guest cannot go on
    #[error("guest {guest}: {fault}; {}", .regs.summary())]
    Guest {
        guest: String,
        fault: GuestFault,
        regs: Box<RegDump>,
    },
    /// a UART state was refused
    #[error("cannot set the UART state")]
    SerialState(#[source] vm_superio::serial::Error<io::Error>),
    /// an image's RAM is not laid out as a VM of its size
    #[error("the image's RAM ranges {found} are not those of a VM with {} of RAM ({expected})", mib_or_bytes(*.size))]
    ImageLayout {
        size: u64,
        found: String,
        expected: String,
    },
    /// an image's RAM could not be read
    #[error("cannot copy the image's RAM into the VM")]
    ImageRead(#[source] DumpError),
    /// an image's vCPU state was refused
    #[error("cannot restore the vCPU state")]
    Restore(#[source] SnapshotError),
    /// The in-kernel devices' state could not be read or written.
    #[error("cannot capture or restore the in-kernel devices")]
    Devices(#[source] devices::DeviceIoError),
    /// Probing which MSRs this KVM reads failed.
    #[error("cannot probe the vCPU's MSRs")]
    MsrProbe(#[source] msr_probe::MsrProbeError),
    /// Reading the machine's state at a checkpoint failed.
    #[error("cannot capture the vCPU state")]
    Capture(#[source] SnapshotError),
    /// The debugger's session failed, or ended the run.
    #[error("{0}")]
    Debugger(String),
    /// The disk file could not be opened.
    #[error("cannot open the disk file {}", .path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The virtio-blk device could not be set up or restored.
    #[error("virtio-blk")]
    VirtioBlk(#[source] virtio_blk::VirtioBlkError),
    /// A fault injection could not change the vCPU or guest RAM.
    #[error("fault injection: {0}")]
    Inject(&'static str),
}

fn mib_or_bytes(n: u64) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

impl VmError {
    /// The registers of a guest that failed, for the dump under the message.
    pub fn regs(&self) -> Option<&RegDump> {
        match self {
            Self::Guest { regs, .. } => Some(regs),
            _ => None,
        }
    }

    fn regs_mut(&mut self) -> Option<&mut RegDump> {
        match self {
            Self::Guest { regs, .. } => Some(regs),
            _ => None,
        }
    }

    /// Names the guest symbol of the failed guest's rip, from `symbols`.
    pub fn symbolize(&mut self, symbols: &kjump_core::symbols::Symbols) {
        if let Some(r) = self.regs_mut() {
            r.rip_symbol = symbols.lookup(r.regs.rip);
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// What stopped [`Vm::run_until_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// A harness message (the vCPU is at the `out` that sent it).
    Message(HarnessEvent),
    /// The checkpoint instruction ran and was answered: the I/O is complete,
    /// `rax` holds `answer` and `rip` points after the instruction.
    Checkpoint { answer: u32 },
    /// The VMM's execution breakpoint ([`Vm::set_exec_breakpoint`]) fired:
    /// the vCPU is about to execute the instruction at `rip`.
    Breakpoint { rip: u64 },
}

/// A KVM memory slot: one guest RAM region.
#[derive(Clone, Copy, Debug)]
struct Slot {
    slot: u32,
    base: u64,
    size: u64,
}

/// The devices an exit can reach: the UART by port, the virtio-blk
/// device by its MMIO window (its requests reach guest RAM).
struct Bus<'a> {
    console: &'a mut Console,
    blk: Option<&'a mut VirtioBlk>,
    mem: &'a GuestMem,
}

impl PortIo for Bus<'_> {
    fn pio_in(&mut self, port: u16, data: &mut [u8]) {
        self.console.read(port, data);
    }
    fn pio_out(&mut self, port: u16, data: &[u8]) {
        self.console.write(port, data);
    }
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match (&mut self.blk, block_offset(addr)) {
            (Some(blk), Some(off)) => {
                blk.mmio_read(off, data);
                true
            }
            _ => false,
        }
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        match (&mut self.blk, block_offset(addr)) {
            (Some(blk), Some(off)) => {
                blk.mmio_write(self.mem, off, data);
                true
            }
            _ => false,
        }
    }
}

fn block_offset(addr: u64) -> Option<u64> {
    virtio_blk::window_offset(BLOCK_DEVICE.base, BLOCK_DEVICE.size, addr)
}

/// Opens the disk file read-write and puts the device in front of it.
fn open_disk(path: &Path) -> Result<VirtioBlk, VmError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| VmError::Disk {
            path: path.to_owned(),
            source,
        })?;
    VirtioBlk::new(file).map_err(VmError::VirtioBlk)
}

/// A kjump VM with one vCPU.
pub struct Vm {
    // Field order is drop order: the vCPU and VM go before the RAM they map.
    vcpu: VcpuFd,
    vm: VmFd,
    /// The KVM device, kept open as long as the VM.
    _kvm: Kvm,
    mem: GuestMem,
    slots: Vec<Slot>,
    console: Console,
    /// The virtio-blk device, when the VM has a disk.
    blk: Option<VirtioBlk>,
    harness: Harness,
    /// `None` for a VM built from an image.
    boot: Option<BootInfo>,
    /// The MSRs captured at every checkpoint: KVM's index list and the
    /// architectural MSRs it reads without listing them.
    msrs: Vec<u32>,
    /// The candidate MSRs KVM refused to read.
    msrs_refused: Vec<u32>,
    /// Whether the VM has the in-kernel irqchip and PIT.
    irqchip: bool,
    stop: StopFlag,
    mem_size: u64,
    /// The guest's checkpoint instruction (`kjump_checkpoint`), when known:
    /// a port read there that is not the checkpoint port is a kernel that
    /// lost its checkpoint port (rdx), reported as such.
    checkpoint_rip: Option<u64>,
    /// The debugger, its breakpoints and what it changed ([`debug`]).
    debug: debug::Debugging,
    /// Time in `KVM_RUN` and handling exits, since last taken.
    run_time: RunTime,
    dirty: DirtyLog,
    /// RAM was zero when the dirty logs began, and they were never
    /// harvested: the next [`Vm::dirty_pages`] names every non-zero page.
    zero_since_log_start: bool,
}

/// Where the vCPU thread's time went while the guest ran
/// ([`Vm::take_run_time`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunTime {
    /// Inside `KVM_RUN`: the guest's own time (on this KVM backend also
    /// the emulation of its ring-0 instructions).
    pub guest: Duration,
    /// In the VMM between `KVM_RUN`s: exits handled (port I/O, harness
    /// messages, completing the checkpoint's `in`).
    pub exits: Duration,
    /// `KVM_RUN` calls.
    pub runs: u64,
}

// The scenario may build a VM on one thread and run it on another.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Vm>();
};

/// Checks a RAM size against what the layout supports.
pub fn check_ram_size(size: u64) -> Result<(), VmError> {
    let why = if size < layout::MIN_RAM {
        format!("at least {} MiB are needed", layout::MIN_RAM >> 20)
    } else if size > layout::MAX_RAM {
        format!("at most {} MiB are supported", layout::MAX_RAM >> 20)
    } else if !size.is_multiple_of(PAGE_SIZE) {
        "not a multiple of 4 KiB".into()
    } else {
        return Ok(());
    };
    Err(VmError::RamSize { size, why })
}

/// Opens the KVM device at `path` and checks it speaks KVM's API, telling
/// apart "no KVM here", "not allowed", "not a KVM device" and "another
/// API version".
fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| VmError::NotKvm {
        path: path.to_path_buf(),
        what: "the path holds a NUL byte".into(),
    })?;
    // Only a character device can be KVM; refuse anything else before
    // opening it (opening some files has effects of its own: a FIFO blocks,
    // a watchdog device arms). A path that cannot be examined is left to
    // open(), whose errno says why.
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_char_device() {
            return Err(VmError::NotKvm {
                path: path.to_path_buf(),
                what: file_kind(path),
            });
        }
    }
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| open_error(path, e))?;
    // Any file opens read-write (as root); only a KVM device answers
    // KVM_GET_API_VERSION, which returns -1 with errno set otherwise.
    let version = kvm.get_api_version();
    let errno = io::Error::last_os_error();
    api_version_error(path, version, &errno).map_or(Ok(kvm), Err)
}

/// Why opening the KVM device at `path` failed, by errno.
fn open_error(path: &Path, errno: kvm_ioctls::Error) -> VmError {
    let path = path.to_path_buf();
    match errno.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::KvmMissing { path, errno },
        libc::EACCES | libc::EPERM => VmError::KvmPermission { path, errno },
        // open(O_RDWR) of a directory.
        libc::EISDIR => VmError::NotKvm {
            what: file_kind(&path),
            path,
        },
        _ => VmError::KvmOpen { path, errno },
    }
}

/// The error for what `KVM_GET_API_VERSION` returned on the device at
/// `path` (`errno` read right after it), if it is not KVM's version.
fn api_version_error(path: &Path, version: i32, errno: &io::Error) -> Option<VmError> {
    let path = path.to_path_buf();
    if version < 0 {
        let what = format!("{}; KVM_GET_API_VERSION: {errno}", file_kind(&path));
        return Some(VmError::NotKvm { path, what });
    }
    (version != KVM_API_VERSION as i32).then_some(VmError::KvmApiVersion { path, version })
}

/// What `path` is, for an error message: "a regular file", "a character
/// device 1:3", ...
fn file_kind(path: &Path) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(m) = std::fs::metadata(path) else {
        return "it cannot be examined".into();
    };
    let t = m.file_type();
    let dev = |kind: &str| {
        let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
        let kvm = if (major, minor) == KVM_DEVICE_NUMBER {
            ", KVM's number"
        } else {
            ""
        };
        format!("a {kind} device {major}:{minor}{kvm}")
    };
    if t.is_dir() {
        "a directory".into()
    } else if t.is_file() {
        "a regular file".into()
    } else if t.is_char_device() {
        dev("character")
    } else if t.is_block_device() {
        dev("block")
    } else if t.is_fifo() {
        "a FIFO".into()
    } else if t.is_socket() {
        "a socket".into()
    } else {
        "not a device".into()
    }
}

fn check_kvm(kvm: &Kvm) -> Result<(), VmError> {
    let required = [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    ];
    for (cap, name) in required {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(())
}

/// Registers each RAM region as a memory slot with dirty logging.
fn register_memory(vm: &VmFd, mem: &GuestMem) -> Result<Vec<Slot>, VmError> {
    let mut slots = Vec::new();
    for (i, region) in mem.iter().enumerate() {
        let slot = Slot {
            slot: i as u32,
            base: region.start_addr().0,
            size: GuestMemoryRegion::len(region),
        };
        let host = region.as_ptr() as u64;
        set_memory_slot(vm, slot, host)?;
        slots.push(slot);
    }
    Ok(slots)
}

fn set_memory_slot(vm: &VmFd, slot: Slot, host: u64) -> Result<(), VmError> {
    let region = kvm_userspace_memory_region {
        slot: slot.slot,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: slot.base,
        memory_size: slot.size,
        userspace_addr: host,
    };
    // SAFETY: `host` is the start of a live mmap of `slot.size` bytes owned
    // by the guest memory, which the `Vm` keeps until after the VM fd is
    // closed (field order); KVM reads and writes only inside it.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("register guest RAM with KVM"))
}

/// KVM with a VM and its RAM registered, nothing loaded yet.
struct Machine {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMem,
    slots: Vec<Slot>,
    dirty: DirtyLog,
}

impl Machine {
    fn create(kvm_device: &Path, mem_size: u64, irqchip: bool) -> Result<Self, VmError> {
        let kvm = open_kvm(kvm_device)?;
        check_kvm(&kvm)?;
        crate::vm::watchdog::install_kick_handler()
            .map_err(|e| kvm_err("install the vCPU kick handler")(e.into()))?;

        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        // Intel needs three pages for real-mode emulation; kjump never uses
        // real mode, but KVM insists on the address being outside RAM.
        vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(kvm_err("set the TSS address"))?;
        if irqchip {
            vm.create_irq_chip()
                .map_err(kvm_err("create the in-kernel irqchip"))?;
            // The PIT, as on a PC: its state is part of what a kernel
            // finds after a jump.
            vm.create_pit2(kvm_bindings::kvm_pit_config::default())
                .map_err(kvm_err("create the in-kernel PIT"))?;
        }

        let (ranges, n) = layout::ram_ranges(mem_size);
        let ranges: Vec<_> = ranges[..n]
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = GuestMem::from_ranges(&ranges).map_err(|source| VmError::Memory {
            size: mem_size,
            source,
        })?;
        let dirty = DirtyLog::new(&vm);
        let slots = register_memory(&vm, &mem)?;
        Ok(Self {
            kvm,
            vm,
            mem,
            slots,
            dirty,
        })
    }
}

/// Copies the non-zero pages of `ram` (whose ranges are `mem`'s) into
/// `mem`; returns how many there were.
fn copy_image(mem: &GuestMem, ram: &dyn RamSource) -> Result<u64, VmError> {
    const CHUNK: usize = 1 << 20;
    let page = PAGE_SIZE as usize;
    let mut buf = vec![0u8; CHUNK];
    let mut copied = 0;
    for (start, len) in ram.ram_ranges() {
        let end = start + len;
        let mut pos = start;
        while pos < end {
            pos = ram.skip_zeros(pos, end).max(pos);
            if pos >= end {
                break;
            }
            let n = (end - pos).min(CHUNK as u64) as usize;
            ram.read_ram(pos, &mut buf[..n])
                .map_err(VmError::ImageRead)?;
            for (i, p) in buf[..n].chunks(page).enumerate() {
                if p.iter().any(|&b| b != 0) {
                    let at = GuestAddress(pos + (i * page) as u64);
                    mem.write_slice(p, at)
                        .map_err(|_| VmError::ImageRead(DumpError::Memory(at.0)))?;
                    copied += 1;
                }
            }
            pos += n as u64;
        }
    }
    Ok(copied)
}

impl Vm {
    /// Builds a VM ready to run its guest's first instruction.
    pub fn new(cfg: &VmConfig) -> Result<Vm, VmError> {
        // Bad input is refused before KVM is touched.
        check_ram_size(cfg.mem_size)?;
        let initramfs_len = cfg.initramfs.as_ref().map(|b| b.len() as u64);
        kjump_core::image::plan(cfg.mem_size, &cfg.kernel, initramfs_len, &cfg.cmdline)?;
        let blk = cfg.disk.as_deref().map(open_disk).transpose()?;

        let Machine {
            kvm,
            vm,
            mem,
            slots,
            dirty,
        } = Machine::create(&cfg.kvm_device, cfg.mem_size, cfg.irqchip)?;

        let boot = boot::load(
            &mem,
            cfg.mem_size,
            &cfg.kernel,
            cfg.initramfs.as_deref(),
            &cfg.cmdline,
        )?;
        log::info!(
            "kernel {:#x}..{:#x} entry {:#x}, initramfs {:x?}, RAM {} MiB",
            boot.kernel_start,
            boot.kernel_end,
            boot.entry,
            boot.initramfs,
            cfg.mem_size >> 20
        );

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the vCPU"))?;
        vcpu::setup_cpuid(&kvm, &vcpu)?;
        vcpu::setup_registers(&vcpu, boot.entry)?;
        let probe = msr_probe::probe_arch_msrs(&vcpu, &vcpu::msr_index_list(&kvm)?)
            .map_err(VmError::MsrProbe)?;

        Ok(Vm {
            vcpu,
            vm,
            _kvm: kvm,
            mem,
            slots,
            console: Console::new(&cfg.console_name, cfg.console.clone()),
            blk,
            harness: Harness::new(),
            boot: Some(boot),
            msrs: probe.indices(),
            msrs_refused: probe.refused,
            irqchip: cfg.irqchip,
            stop: cfg.stop.clone(),
            mem_size: cfg.mem_size,
            checkpoint_rip: None,
            debug: Default::default(),
            run_time: RunTime::default(),
            dirty,
            // Fresh anonymous memory, registered with KVM's dirty log
            // before anything was written, every VMM write since through
            // vm-memory's bitmap.
            zero_since_log_start: true,
        })
    }

    /// Before the first run: fills guest RAM with `ram`'s ranges (every
    /// page, zeros included, over what the boot loaded there) and points
    /// the vCPU, still in its boot state (64-bit, interrupts off), at `rip`
    /// with stack `rsp` and page tables `cr3`: a kernel entered at its
    /// re-entry point by the VMM, as a restore kernel would enter it.
    /// `cr3` must lie in RAM.
    pub fn enter_image(
        &mut self,
        ram: &dyn RamSource,
        rip: u64,
        rsp: u64,
        cr3: u64,
    ) -> Result<(), VmError> {
        const CHUNK: usize = 1 << 20;
        if !self.mem.address_in_range(GuestAddress(cr3)) {
            return Err(VmError::ImageRead(DumpError::Memory(cr3)));
        }
        let mut buf = vec![0u8; CHUNK];
        for (start, len) in ram.ram_ranges() {
            let mut pos = start;
            while pos < start + len {
                let n = (start + len - pos).min(CHUNK as u64) as usize;
                ram.read_ram(pos, &mut buf[..n])
                    .map_err(VmError::ImageRead)?;
                self.mem
                    .write_slice(&buf[..n], GuestAddress(pos))
                    .map_err(|_| VmError::ImageRead(DumpError::Memory(pos)))?;
                pos += n as u64;
            }
        }
        let mut regs = self
            .vcpu
            .get_regs()
            .map_err(kvm_err("read the registers"))?;
        regs.rip = rip;
        regs.rsp = rsp;
        self.vcpu
            .set_regs(&regs)
            .map_err(kvm_err("set the registers"))?;
        let mut sregs = self
            .vcpu
            .get_sregs()
            .map_err(kvm_err("read the system registers"))?;
        sregs.cr3 = cr3;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(kvm_err("set the system registers"))?;
        Ok(())
    }

    /// Builds a VM that goes on from an image of a running one: `mem_size`
    /// bytes of RAM laid out as [`Vm::new`] lays them out, filled from
    /// `ram` (zero pages are left alone: fresh RAM is zero), the in-kernel
    /// irqchip (the state has a local APIC), the vCPU with the CPUID of a
    /// normal boot and then every part of `state`. No kernel is loaded and
    /// no `boot_params` written. From `cfg` only the console, its name and
    /// the stop flag are used. The dirty logs start empty: the first
    /// [`Vm::dirty_pages`] reports the guest's writes only.
    pub fn from_image(
        cfg: &VmConfig,
        mem_size: u64,
        ram: &dyn RamSource,
        state: &VcpuState,
    ) -> Result<Vm, VmError> {
        check_ram_size(mem_size)?;
        let (expected, n) = layout::ram_ranges(mem_size);
        let expected = &expected[..n];
        let found = ram.ram_ranges();
        if found != expected {
            let show = |r: &[(u64, u64)]| {
                r.iter()
                    .map(|(a, l)| format!("[{a:#x}..{:#x})", a + l))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            return Err(VmError::ImageLayout {
                size: mem_size,
                found: show(&found),
                expected: show(expected),
            });
        }
        let Machine {
            kvm,
            vm,
            mem,
            slots,
            dirty,
        } = Machine::create(&cfg.kvm_device, mem_size, true)?;
        let copied = copy_image(&mem, ram)?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the vCPU"))?;
        vcpu::setup_cpuid(&kvm, &vcpu)?;
        let probe = msr_probe::probe_arch_msrs(&vcpu, &vcpu::msr_index_list(&kvm)?)
            .map_err(VmError::MsrProbe)?;
        capture::restore(&vcpu, state).map_err(VmError::Restore)?;
        log::info!(
            "VM from an image: {copied} non-zero pages of {} MiB, rip {:#x}",
            mem_size >> 20,
            state.regs.rip
        );

        let mut vm = Vm {
            vcpu,
            vm,
            _kvm: kvm,
            mem,
            slots,
            console: Console::new(&cfg.console_name, cfg.console.clone()),
            blk: None,
            harness: Harness::new(),
            boot: None,
            msrs: probe.indices(),
            msrs_refused: probe.refused,
            irqchip: true,
            stop: cfg.stop.clone(),
            mem_size,
            checkpoint_rip: None,
            debug: Default::default(),
            run_time: RunTime::default(),
            dirty,
            zero_since_log_start: false,
        };
        // The copy went through vm-memory's log of the VMM's writes.
        vm.dirty_pages()?;
        Ok(vm)
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// Guest RAM size in bytes (the hole not counted).
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Where the boot put the kernel, initramfs and command line (`None`
    /// for a VM built from an image).
    pub fn boot_info(&self) -> Option<&BootInfo> {
        self.boot.as_ref()
    }

    #[cfg(test)]
    pub(in crate::vm) fn vcpu_fd(&self) -> &VcpuFd {
        &self.vcpu
    }

    /// The whole machine now, as a value: the vCPU's complete state (in
    /// [`capture::capture`]'s order) and the devices' states.
    pub fn capture_machine(&self) -> Result<MachineState, VmError> {
        let vcpu = capture::capture(&self.vcpu, &self.msrs).map_err(VmError::Capture)?;
        let mut m = MachineState::new(vcpu, UartState::from(&self.serial_state()));
        if self.irqchip {
            for d in devices::capture_devices(&self.vm).map_err(VmError::Devices)? {
                m.devices.insert(d.name().to_owned(), d);
            }
        }
        if let Some(blk) = &self.blk {
            let d = DeviceState::VirtioBlk(blk.state());
            m.devices.insert(d.name().to_owned(), d);
        }
        Ok(m)
    }

    /// Changes `field` of an in-kernel device (the device faults); says
    /// what it did.
    pub fn change_device_field(&self, field: DeviceField) -> Result<String, VmError> {
        if !self.irqchip {
            return Err(VmError::Inject("this VM has no in-kernel irqchip"));
        }
        devices::change_field(&self.vm, field).map_err(VmError::Devices)
    }

    /// Loads in-kernel device states (from a dump) into KVM.
    pub fn restore_devices(
        &self,
        states: &[kjump_core::state::DeviceState],
    ) -> Result<(), VmError> {
        devices::restore_devices(&self.vm, states).map_err(VmError::Devices)
    }

    /// Flips the lowest bit of the guest byte at `at` (fault injection).
    pub fn flip_byte(&self, at: u64) -> Result<(), VmError> {
        let a = GuestAddress(at);
        let b: u8 = self
            .mem
            .read_obj(a)
            .map_err(|_| VmError::Inject("fault target outside RAM"))?;
        self.mem
            .write_obj(b ^ 0x01, a)
            .map_err(|_| VmError::Inject("fault target outside RAM"))
    }

    /// Writes a u64 of guest RAM behind the guest's back (fault injection).
    pub fn write_u64(&self, at: u64, v: u64) -> Result<(), VmError> {
        self.mem
            .write_obj(v, GuestAddress(at))
            .map_err(|_| VmError::Inject("fault target outside RAM"))
    }

    /// Changes `field` of the vCPU (the `vcpu-*` faults); says what it did.
    pub fn change_vcpu_field(&self, field: VcpuField) -> Result<String, VmError> {
        let vcpu = &self.vcpu;
        let failed = |_| VmError::Inject("the vcpu-* fault could not change the vCPU");
        Ok(match field {
            VcpuField::Dr0 => {
                let mut d = vcpu.get_debug_regs().map_err(failed)?;
                let old = d.db[0];
                d.db[0] ^= 0x1000;
                vcpu.set_debug_regs(&d).map_err(failed)?;
                format!("changed the vCPU's dr0 {old:#x} -> {:#x}", d.db[0])
            }
            VcpuField::Msr(index, name, flip) => {
                let entry = |data| kvm_bindings::kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                };
                let mut msrs = kvm_bindings::Msrs::from_entries(&[entry(0)])
                    .map_err(|_| VmError::Inject("cannot build an MSR list"))?;
                if vcpu.get_msrs(&mut msrs).map_err(failed)? != 1 {
                    return Err(VmError::Inject("this KVM does not expose the MSR"));
                }
                let old = msrs.as_slice()[0].data;
                let new = kvm_bindings::Msrs::from_entries(&[entry(old ^ flip)])
                    .map_err(|_| VmError::Inject("cannot build an MSR list"))?;
                if vcpu.set_msrs(&new).map_err(failed)? != 1 {
                    return Err(VmError::Inject("KVM refused to set the MSR"));
                }
                format!("changed the vCPU's {name} {old:#x} -> {:#x}", old ^ flip)
            }
            VcpuField::LapicTpr => {
                let mut l = vcpu.get_lapic().map_err(failed)?;
                let old = l.regs[LAPIC_TPR] as u8;
                l.regs[LAPIC_TPR] = (old ^ 0x10) as _;
                vcpu.set_lapic(&l).map_err(failed)?;
                format!("changed the local APIC's TPR {old:#x} -> {:#x}", old ^ 0x10)
            }
        })
    }

    /// The MSRs captured at every checkpoint (KVM's index list and the
    /// architectural MSRs it reads without listing them).
    pub fn msr_index_list(&self) -> &[u32] {
        &self.msrs
    }

    /// The candidate MSRs this KVM refused to read (not captured).
    pub fn msrs_refused(&self) -> &[u32] {
        &self.msrs_refused
    }

    /// The vCPU's general and special registers, now.
    /// Tells the VM where the guest's checkpoint instruction is (see
    /// `checkpoint_rip`).
    pub fn set_checkpoint_rip(&mut self, rip: Option<u64>) {
        self.checkpoint_rip = rip;
    }

    /// The scenario moved forward (see [`StopFlag::advance`]): the
    /// watchdog's count starts again. Neither a checkpoint nor a message
    /// does this by itself; the scenario knows which move it forward.
    pub fn advanced(&self) {
        self.stop.advance();
    }

    pub fn registers(&self) -> RegDump {
        RegDump::read(&self.vcpu)
    }

    pub fn serial_state(&self) -> SerialState {
        self.console.state()
    }

    /// Replaces the UART's registers (the console output is kept).
    pub fn set_serial_state(&mut self, state: &SerialState) -> Result<(), VmError> {
        self.console.set_state(state).map_err(VmError::SerialState)
    }

    /// The name in front of the guest's console lines from now on.
    pub fn set_console_name(&mut self, name: &str) {
        // A line the guest started under the old name ends under it.
        self.console.flush();
        self.console.set_name(name);
    }

    pub fn console_name(&self) -> &str {
        self.console.name()
    }

    /// Guest-physical addresses of the pages written since the previous
    /// call (the first call: since the VM was made), sorted: KVM's dirty log
    /// (the guest's writes) united with vm-memory's bitmap (the VMM's own).
    /// Both are reset.
    /// Also names, at every call, the pages given to
    /// [`Vm::keep_writable`], written or not.
    pub fn dirty_pages(&mut self) -> Result<Vec<u64>, VmError> {
        self.zero_since_log_start = false;
        self.dirty.harvest(&self.vm, &self.slots, &self.mem)
    }

    /// Pages the guest is to write between every two checkpoints (those
    /// a kexec jump rewrites): where KVM allows, they are not
    /// write-protected again after a harvest, so the guest writes them
    /// without a dirty-log fault, and every [`Vm::dirty_pages`] names
    /// them, written or not (see [`dirty`]). Replaces the previous set.
    pub fn keep_writable(&mut self, pages: &[u64]) {
        self.dirty.keep_writable(&self.slots, pages);
    }

    /// Whether the next [`Vm::dirty_pages`] names every page of RAM that
    /// is not zero: true for a VM made by [`Vm::new`] (its RAM was fresh
    /// when the dirty logs began) until the logs are first harvested.
    pub fn dirty_log_covers_all_writes(&self) -> bool {
        self.zero_since_log_start
    }

    /// The time spent in the guest and handling its exits since the last
    /// call (or since the VM was made).
    pub fn take_run_time(&mut self) -> RunTime {
        std::mem::take(&mut self.run_time)
    }

    /// Runs the guest until a harness message or a checkpoint. `answer` is
    /// called at a checkpoint for the value the guest's `in` gets.
    pub fn run_until_event(&mut self, answer: &mut dyn FnMut() -> u32) -> Result<VmEvent, VmError> {
        let start = Instant::now();
        let guest = self.run_time.guest;
        let event = self.next_event(answer);
        let spent = start.elapsed();
        self.run_time.exits += spent.saturating_sub(self.run_time.guest - guest);
        event
    }

    fn next_event(&mut self, answer: &mut dyn FnMut() -> u32) -> Result<VmEvent, VmError> {
        let run: *mut kvm_bindings::kvm_run = self.vcpu.get_kvm_run();
        // SAFETY: the `kvm_run` mapping belongs to `self.vcpu`, which
        // `&mut self` keeps alive past the guard at the end of this call.
        let _kick = unsafe { KickGuard::arm(run) };
        loop {
            if let Some(reason) = self.stop.reason() {
                return Err(self.guest_error(GuestFault::from(reason)));
            }
            if self.debug.active() {
                self.debug_serve()?;
            }
            let entered = Instant::now();
            let exit = self.vcpu.run();
            self.run_time.guest += entered.elapsed();
            self.run_time.runs += 1;
            let action = match exit {
                Ok(exit) => {
                    let mut bus = Bus {
                        console: &mut self.console,
                        blk: self.blk.as_mut(),
                        mem: &self.mem,
                    };
                    vcpu::handle_exit(exit, &mut bus, answer)
                }
                Err(e) if e.errno() == libc::EINTR => {
                    // A kick (the flag is checked above) or a stray signal.
                    self.vcpu.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(VmError::Run(e)),
            };
            match action {
                ExitAction::Continue => {}
                ExitAction::StrayIn { port } => {
                    if let Some(at) = self.checkpoint_rip {
                        let regs = self.vcpu.get_regs().unwrap_or_default();
                        // At the I/O exit rip is the `in`, or just past it.
                        if regs.rip == at || regs.rip == at + 1 {
                            return Err(self.guest_error(GuestFault::CheckpointPort {
                                port,
                                rdx: regs.rdx,
                            }));
                        }
                    }
                }
                ExitAction::Checkpoint { answer } => {
                    self.complete_io()?;
                    return Ok(VmEvent::Checkpoint { answer });
                }
                ExitAction::HarnessMessage { addr } => {
                    return match self.harness.decode(&self.mem, addr) {
                        Ok(event) => Ok(VmEvent::Message(event)),
                        Err(e) => Err(self.guest_error(GuestFault::Protocol(e))),
                    };
                }
                ExitAction::Fault(fault) => return Err(self.guest_error(fault)),
                ExitAction::Debug(exit) => {
                    if let Some(rip) = self.debug_exit(exit)? {
                        return Ok(VmEvent::Breakpoint { rip });
                    }
                }
            }
        }
    }

    /// Stops the guest before it executes the instruction at `addr` (a
    /// hardware breakpoint in DR0, `KVM_SET_GUEST_DEBUG`: the guest cannot
    /// skip it, and it costs nothing until it fires), or clears it. The
    /// guest's own debug registers are not touched: KVM keeps the
    /// debugger's apart.
    /// It shares DR0–DR3 with an attached debugger ([`debug`]).
    pub fn set_exec_breakpoint(&mut self, addr: Option<u64>) -> Result<(), VmError> {
        self.debug.vmm_break = addr;
        self.apply_guest_debug()
    }

    /// Finishes the pending `in`: KVM writes the data into `rax` and moves
    /// `rip` on when `KVM_RUN` is entered, and with `immediate_exit` it
    /// returns right after (as KVM's selftest `state_test` does).
    fn complete_io(&mut self) -> Result<(), VmError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.vcpu.run().map(|exit| match exit {
            kvm_ioctls::VcpuExit::Debug(a) => Err(debug::DebugExit {
                exception: a.exception,
                pc: a.pc,
                dr6: a.dr6,
            }),
            other => Ok(format!("{other:?}")),
        });
        self.vcpu.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(VmError::Run(e)),
            // A single step ends with the checkpoint instruction's I/O.
            Ok(Err(step)) if self.debugger_attached() => self.debug_exit(step).map(|_| ()),
            Ok(Err(step)) => Err(VmError::CompleteIo(format!("{step:?}"))),
            Ok(Ok(exit)) => Err(VmError::CompleteIo(exit)),
        }
    }

    /// A guest failure with the registers as they are now, and the details
    /// only KVM's run structure has.
    fn guest_error(&mut self, mut fault: GuestFault) -> VmError {
        self.console.flush();
        let regs = RegDump::read(&self.vcpu);
        match &mut fault {
            GuestFault::Halted { interrupts_enabled } => {
                *interrupts_enabled = regs.regs.rflags & vcpu::RFLAGS_IF != 0;
            }
            GuestFault::InternalError { suberror } => {
                let run = self.vcpu.get_kvm_run();
                if run.exit_reason == KVM_EXIT_INTERNAL_ERROR {
                    // SAFETY: the exit reason says `internal` is the union
                    // member KVM filled in.
                    *suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                }
            }
            _ => {}
        }
        VmError::Guest {
            guest: self.console.name().to_owned(),
            fault,
            regs: Box::new(regs),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.console.flush();
    }
}

/// True when /dev/kvm can be opened.
pub fn kvm_available() -> bool {
    Path::new("/dev/kvm").exists() && Kvm::new().is_ok()
}

/// For tests that need KVM: true when it is there. Without it the test
/// should return early (this prints a loud SKIPPED line), unless
/// `KJUMP_REQUIRE_KVM=1`, which turns the skip into a failure.
pub fn kvm_or_skip(test: &str) -> bool {
    if kvm_available() {
        return true;
    }
    assert!(
        std::env::var("KJUMP_REQUIRE_KVM").as_deref() != Ok("1"),
        "{test}: KJUMP_REQUIRE_KVM=1 but /dev/kvm cannot be opened"
    );
    eprintln!(
        "SKIPPED {test}: /dev/kvm cannot be opened (set KJUMP_REQUIRE_KVM=1 to fail instead)"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::boot::testing::tiny_elf;
    use kjump_abi::abi::{ANSWER_BACK, ANSWER_JUMP, HarnessMsg, MsgKind};
    use kjump_core::harness::HarnessEvent;
    use std::sync::{Arc, Mutex};
    use vm_memory::Bytes;

    const ENTRY: u64 = 0x20_0000;

    /// Assembled from (intel syntax, 64-bit):
    /// ```text
    /// 0x00 mov dx, 0x3f8 ; mov al,'h' ; out dx,al ; mov al,'i' ; out dx,al
    ///      mov al, 10 ; out dx, al
    /// 0x0d mov dx, 0x7e4 ; in eax, dx            (checkpoint)
    /// 0x12 mov dword ptr [0x300000], eax
    /// 0x19 mov eax, 0x100000 ; mov dx, 0x7e0 ; out dx, eax   (harness message)
    /// 0x23 mov dx, 0x7e4 ; in eax, dx            (checkpoint)
    /// 0x28 hlt
    /// 0x29 jmp 0x29
    /// 0x2b ud2
    /// ```
    const PROG: &[u8] = &[
        0x66, 0xba, 0xf8, 0x03, 0xb0, 0x68, 0xee, 0xb0, 0x69, 0xee, 0xb0, 0x0a, 0xee, 0x66, 0xba,
        0xe4, 0x07, 0xed, 0x89, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, 0xb8, 0x00, 0x00, 0x10, 0x00,
        0x66, 0xba, 0xe0, 0x07, 0xef, 0x66, 0xba, 0xe4, 0x07, 0xed, 0xf4, 0xeb, 0xfe, 0x0f, 0x0b,
    ];
    const SPIN: u64 = 0x29;
    const UD2: u64 = 0x2b;

    /// `mov eax, dword ptr [0x2000_0000]` (mapped, but no RAM there), from
    /// `a1 <imm64>`.
    const MMIO_READ: &[u8] = &[0xa1, 0, 0, 0, 0x20, 0, 0, 0, 0];

    fn config(code: &[u8], entry_offset: u64) -> (VmConfig, Arc<Mutex<Vec<String>>>) {
        let mut elf = tiny_elf(code, ENTRY);
        elf[24..32].copy_from_slice(&(ENTRY + entry_offset).to_le_bytes());
        let mut cfg = VmConfig::new(elf, "kjump.role=a");
        cfg.mem_size = 64 << 20;
        let (sink, buf) = ConsoleSink::capture();
        cfg.console = sink;
        cfg.console_name = "t".into();
        (cfg, buf)
    }

    #[test]
    fn ram_size_limits() {
        assert!(check_ram_size(256 << 20).is_ok());
        assert!(matches!(
            check_ram_size(16 << 20),
            Err(VmError::RamSize { .. })
        ));
        assert!(matches!(
            check_ram_size(layout::MAX_RAM + 4096),
            Err(VmError::RamSize { .. })
        ));
        assert!(matches!(
            check_ram_size((64 << 20) + 1),
            Err(VmError::RamSize { .. })
        ));
    }

    #[test]
    fn bad_input_is_refused_before_kvm() {
        // These hold with or without /dev/kvm.
        let mut cfg = VmConfig::new(b"not an elf".to_vec(), "");
        assert!(matches!(
            Vm::new(&cfg),
            Err(VmError::Boot(BootError::NotElf))
        ));
        cfg.kernel = tiny_elf(&[0xf4], ENTRY);
        cfg.mem_size = 1 << 20;
        assert!(matches!(Vm::new(&cfg), Err(VmError::RamSize { .. })));
        cfg.mem_size = 32 << 20;
        cfg.initramfs = Some(vec![0; 40 << 20]);
        assert!(matches!(
            Vm::new(&cfg),
            Err(VmError::Boot(BootError::InitramfsTooLarge { .. }))
        ));
    }

    /// The one line `main` prints for `e` (message and causes).
    fn line(e: &VmError) -> String {
        let mut s = e.to_string();
        let mut c = std::error::Error::source(e);
        while let Some(x) = c {
            s += &format!(": {x}");
            c = x.source();
        }
        s
    }

    #[test]
    fn a_kvm_device_that_is_missing_or_not_kvm_is_named_with_its_cause() {
        // These hold with or without /dev/kvm.
        let dir = std::env::temp_dir().join(format!("kjump-vm-kvmdev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, b"not kvm").unwrap();
        let missing = dir.join("nope");

        let e = open_kvm(&missing).unwrap_err();
        assert!(matches!(&e, VmError::KvmMissing { path, .. } if *path == missing));
        let l = line(&e);
        assert!(
            l.starts_with(&format!(
                "cannot open the KVM device {}: No such file or directory",
                missing.display()
            )) && l.contains("is KVM enabled"),
            "{l}"
        );

        for (p, kind) in [
            (&file, "a regular file)"),
            (&dir, "a directory"),
            (&PathBuf::from("/dev/null"), "a character device 1:3; "),
        ] {
            let e = open_kvm(p).unwrap_err();
            assert!(matches!(&e, VmError::NotKvm { .. }), "{p:?}: {e:?}");
            let l = line(&e);
            assert!(
                l.starts_with(&format!("{} is not a KVM device ({kind}", p.display())),
                "{l}"
            );
        }
        let e = open_kvm(Path::new("bad\0path")).unwrap_err();
        assert!(line(&e).contains("NUL byte"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kvm_device_errors_by_errno_and_api_version() {
        let p = Path::new("/dev/kvm0");
        let e = |n| open_error(p, kvm_ioctls::Error::new(n));
        assert!(matches!(e(libc::ENODEV), VmError::KvmMissing { .. }));
        assert!(matches!(e(libc::ENXIO), VmError::KvmMissing { .. }));
        let denied = e(libc::EACCES);
        assert!(matches!(denied, VmError::KvmPermission { .. }));
        let l = line(&denied);
        assert!(
            l.starts_with("no permission to open the KVM device /dev/kvm0: Permission denied")
                && l.contains("`kvm`"),
            "{l}"
        );
        assert!(matches!(e(libc::EPERM), VmError::KvmPermission { .. }));
        assert!(matches!(e(libc::EISDIR), VmError::NotKvm { .. }));
        let other = e(libc::ELOOP);
        assert!(matches!(other, VmError::KvmOpen { .. }));
        assert!(
            line(&other).contains("/dev/kvm0: Too many levels"),
            "{other}"
        );

        let ok = io::Error::from_raw_os_error(0);
        assert!(api_version_error(p, KVM_API_VERSION as i32, &ok).is_none());
        let v = api_version_error(p, 11, &ok).unwrap();
        assert!(matches!(v, VmError::KvmApiVersion { version: 11, .. }));
        assert_eq!(
            v.to_string(),
            format!(
                "the KVM device /dev/kvm0 has KVM API version 11; kjump needs {KVM_API_VERSION}"
            )
        );
        let not = api_version_error(p, -1, &io::Error::from_raw_os_error(libc::ENOTTY)).unwrap();
        assert!(
            line(&not).contains("KVM_GET_API_VERSION: Inappropriate ioctl for device"),
            "{not}"
        );
    }

    #[test]
    fn the_real_kvm_device_opens_and_is_named_as_kvm() {
        if !kvm_or_skip("the_real_kvm_device_opens_and_is_named_as_kvm") {
            return;
        }
        assert!(open_kvm(Path::new(DEFAULT_KVM_DEVICE)).is_ok());
        assert!(file_kind(Path::new(DEFAULT_KVM_DEVICE)).ends_with("10:232, KVM's number"));
    }

    #[test]
    fn guest_runs_checkpoints_messages_and_console() {
        if !kvm_or_skip("guest_runs_checkpoints_messages_and_console") {
            return;
        }
        let (cfg, console) = config(PROG, 0);
        let mut vm = Vm::new(&cfg).unwrap();
        assert!(!vm.msr_index_list().is_empty());
        assert!(vm.msr_index_list().contains(&vcpu::msr::LSTAR));
        let first = vm.dirty_pages().unwrap();
        assert!(first.contains(&ENTRY), "the VMM's own writes are reported");
        assert!(first.contains(&layout::ZERO_PAGE));

        let mut msg = HarnessMsg::new(MsgKind::Log);
        msg.text_ptr = 0x10_1000;
        msg.text_len = 5;
        vm.memory()
            .write_slice(&msg.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        vm.memory()
            .write_slice(b"hello", GuestAddress(0x10_1000))
            .unwrap();
        vm.dirty_pages().unwrap();

        let ev = vm.run_until_event(&mut || ANSWER_JUMP).unwrap();
        assert_eq!(
            ev,
            VmEvent::Checkpoint {
                answer: ANSWER_JUMP
            }
        );
        let r = vm.vcpu_fd().get_regs().unwrap();
        assert_eq!(r.rax, u64::from(ANSWER_JUMP), "the I/O was completed");
        assert_eq!(r.rip, ENTRY + 0x12, "rip is past the `in`");
        assert_eq!(console.lock().unwrap().as_slice(), ["[t] hi"]);

        let ev = vm
            .run_until_event(&mut || panic!("no checkpoint here"))
            .unwrap();
        assert_eq!(
            ev,
            VmEvent::Message(HarnessEvent::Log {
                text: "hello".into()
            })
        );
        let dirty = vm.dirty_pages().unwrap();
        assert!(
            dirty.contains(&0x30_0000),
            "the guest's store is in the dirty log: {dirty:x?}"
        );
        let word: u32 = vm.memory().read_obj(GuestAddress(0x30_0000)).unwrap();
        assert_eq!(word, ANSWER_JUMP);

        let ev = vm.run_until_event(&mut || ANSWER_BACK).unwrap();
        assert_eq!(
            ev,
            VmEvent::Checkpoint {
                answer: ANSWER_BACK
            }
        );
        assert!(
            !vm.dirty_pages().unwrap().contains(&0x30_0000),
            "the log was reset"
        );

        vm.set_console_name("b");
        let err = vm.run_until_event(&mut || 0).unwrap_err();
        match &err {
            VmError::Guest {
                guest,
                fault:
                    GuestFault::Halted {
                        interrupts_enabled: false,
                    },
                regs,
            } => {
                assert_eq!(guest, "b");
                assert_eq!(regs.regs.rip, ENTRY + 0x29);
                assert_eq!(regs.sregs.cr3, layout::BOOT_PML4);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("guest b: halted (hlt) with interrupts off; rip=0x200029")
        );
    }

    /// Stores the last answer at 0x300000 and 0x301000, then checkpoints,
    /// forever:
    /// ```text
    /// 0x00 mov dword ptr [0x300000], eax
    /// 0x07 mov dword ptr [0x301000], eax
    /// 0x0e mov dx, 0x7e4 ; in eax, dx        (checkpoint)
    /// 0x13 jmp 0x00
    /// ```
    const STORE_LOOP: &[u8] = &[
        0x89, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, 0x89, 0x04, 0x25, 0x00, 0x10, 0x30, 0x00, 0x66,
        0xba, 0xe4, 0x07, 0xed, 0xeb, 0xeb,
    ];

    #[test]
    fn pages_kept_writable_are_reported_at_every_harvest_and_others_when_written() {
        if !kvm_or_skip("pages_kept_writable_are_reported_at_every_harvest_and_others_when_written")
        {
            return;
        }
        let (x, y, idle) = (0x30_0000, 0x30_1000, 0x50_0000);
        let (cfg, _) = config(STORE_LOOP, 0);
        let mut vm = Vm::new(&cfg).unwrap();
        assert!(vm.dirty_log_covers_all_writes());
        vm.dirty_pages().unwrap();
        assert!(!vm.dirty_log_covers_all_writes());
        vm.keep_writable(&[x, idle]);
        let mut answer = 0x1000;
        let mut step = |vm: &mut Vm| {
            answer += 1;
            let a = answer;
            assert!(matches!(
                vm.run_until_event(&mut || a).unwrap(),
                VmEvent::Checkpoint { .. }
            ));
            (vm.dirty_pages().unwrap(), a)
        };
        step(&mut vm);
        for _ in 0..3 {
            // Both stores are seen with the content the guest wrote: x
            // because it is reported at every harvest, y because it was
            // write-protected again and faulted.
            let (dirty, a) = step(&mut vm);
            assert!(
                dirty.contains(&x) && dirty.contains(&y) && dirty.contains(&idle),
                "{dirty:x?}"
            );
            for p in [x, y] {
                let v: u32 = vm.memory().read_obj(GuestAddress(p)).unwrap();
                assert_eq!(v, a - 1, "the previous answer at {p:#x}");
            }
        }
        // Kept pages are named even when nothing ran.
        let again = vm.dirty_pages().unwrap();
        assert_eq!(again, [x, idle]);
        // Released, they are named once more and then only when written.
        vm.keep_writable(&[]);
        assert_eq!(vm.dirty_pages().unwrap(), [x]);
        assert_eq!(vm.dirty_pages().unwrap(), Vec::<u64>::new());
        let (dirty, _) = step(&mut vm);
        assert!(dirty.contains(&x) && dirty.contains(&y), "{dirty:x?}");
        assert!(!dirty.contains(&idle), "{dirty:x?}");
    }

    #[test]
    fn with_an_irqchip_the_lapic_can_be_read() {
        if !kvm_or_skip("with_an_irqchip_the_lapic_can_be_read") {
            return;
        }
        let (mut cfg, _) = config(PROG, 0);
        let vm = Vm::new(&cfg).unwrap();
        assert!(
            vm.vcpu_fd().get_lapic().is_err(),
            "no irqchip, no local APIC"
        );
        cfg.irqchip = true;
        let mut vm = Vm::new(&cfg).unwrap();
        assert!(vm.vcpu_fd().get_lapic().is_ok());
        let ev = vm.run_until_event(&mut || ANSWER_BACK).unwrap();
        assert_eq!(
            ev,
            VmEvent::Checkpoint {
                answer: ANSWER_BACK
            }
        );
        assert_eq!(vm.vcpu_fd().get_regs().unwrap().rip, ENTRY + 0x12);
    }

    #[test]
    fn a_vm_built_from_an_image_goes_on_where_the_image_was_taken() {
        if !kvm_or_skip("a_vm_built_from_an_image_goes_on_where_the_image_was_taken") {
            return;
        }
        let (mut cfg, _) = config(PROG, 0);
        cfg.irqchip = true;
        let mut vm = Vm::new(&cfg).unwrap();
        let mut msg = HarnessMsg::new(MsgKind::Log);
        msg.text_ptr = 0x10_1000;
        msg.text_len = 5;
        vm.memory()
            .write_slice(&msg.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        vm.memory()
            .write_slice(b"again", GuestAddress(0x10_1000))
            .unwrap();
        vm.run_until_event(&mut || ANSWER_JUMP).unwrap();
        let state = capture::capture(vm.vcpu_fd(), vm.msr_index_list()).unwrap();

        let (cfg2, console) = config(PROG, 0);
        let mut again = Vm::from_image(&cfg2, cfg.mem_size, vm.memory(), &state).unwrap();
        assert!(again.boot_info().is_none() && vm.boot_info().is_some());
        assert_eq!(
            capture::capture(again.vcpu_fd(), again.msr_index_list())
                .unwrap()
                .regs,
            state.regs
        );
        assert!(
            again.dirty_pages().unwrap().is_empty(),
            "the copy is not in the dirty log"
        );
        let word: u32 = again.memory().read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(word.to_le_bytes(), msg.to_bytes()[..4]);
        // It goes on after the `in`: it stores the answer, then sends the
        // message it finds in the copied RAM.
        let ev = again
            .run_until_event(&mut || panic!("no checkpoint"))
            .unwrap();
        assert_eq!(
            ev,
            VmEvent::Message(HarnessEvent::Log {
                text: "again".into()
            })
        );
        let stored: u32 = again.memory().read_obj(GuestAddress(0x30_0000)).unwrap();
        assert_eq!(stored, ANSWER_JUMP);
        assert!(again.dirty_pages().unwrap().contains(&0x30_0000));
        assert!(console.lock().unwrap().is_empty(), "nothing was booted");

        // RAM laid out for another size is refused.
        let e = Vm::from_image(&cfg2, 128 << 20, vm.memory(), &state)
            .err()
            .unwrap();
        assert!(matches!(e, VmError::ImageLayout { .. }), "{e}");
        assert!(e.to_string().contains("128 MiB"), "{e}");
    }

    #[test]
    fn triple_fault_is_reported_with_registers() {
        if !kvm_or_skip("triple_fault_is_reported_with_registers") {
            return;
        }
        let (cfg, _) = config(PROG, UD2);
        let mut vm = Vm::new(&cfg).unwrap();
        let err = vm.run_until_event(&mut || 0).unwrap_err();
        assert!(
            matches!(
                &err,
                VmError::Guest {
                    fault: GuestFault::TripleFault,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.regs().is_some());
    }

    #[test]
    fn access_outside_ram_is_reported() {
        if !kvm_or_skip("access_outside_ram_is_reported") {
            return;
        }
        let (cfg, _) = config(MMIO_READ, 0);
        let mut vm = Vm::new(&cfg).unwrap();
        let err = vm.run_until_event(&mut || 0).unwrap_err();
        assert!(
            matches!(
                &err,
                VmError::Guest {
                    fault: GuestFault::Mmio {
                        addr: 0x2000_0000,
                        write: false,
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_harness_pointer_is_a_protocol_error() {
        if !kvm_or_skip("bad_harness_pointer_is_a_protocol_error") {
            return;
        }
        // The program's message address (1 MiB) holds no message.
        let (cfg, _) = config(PROG, 0);
        let mut vm = Vm::new(&cfg).unwrap();
        vm.run_until_event(&mut || ANSWER_JUMP).unwrap();
        let err = vm.run_until_event(&mut || 0).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("guest t: protocol error: message at 0x100000 has magic"),
            "{err}"
        );
    }

    #[test]
    fn stop_flag_ends_a_spinning_guest_with_its_registers() {
        if !kvm_or_skip("stop_flag_ends_a_spinning_guest_with_its_registers") {
            return;
        }
        let (cfg, _) = config(PROG, SPIN);
        let timeout = Duration::from_millis(300);
        let wd = crate::vm::watchdog::WatchdogConfig::new(timeout);
        let res = crate::vm::watchdog::run_guarded(&wd, move |stop| {
            let mut cfg = cfg;
            cfg.stop = stop;
            let mut vm = Vm::new(&cfg)?;
            vm.run_until_event(&mut || 0)
        })
        .unwrap();
        match res {
            Err(VmError::Guest {
                fault: GuestFault::Timeout { after },
                regs,
                ..
            }) => {
                assert_eq!(after, timeout);
                assert_eq!(regs.regs.rip, ENTRY + SPIN);
            }
            other => panic!("{other:?}"),
        }
    }
}
