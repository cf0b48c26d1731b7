//! kjump: a KVM harness that proves kexec jump right.
//!
//! The spine: [`vm`] boots a guest on KVM ([`boot`] loads it, [`vcpu`] runs
//! it, [`serial`] and [`harness`] are its devices); [`scenario`] drives the
//! kernels through their jumps; at each checkpoint [`snapshot`] captures the
//! vCPU, [`pages`] tracks guest RAM, [`oracle`] compares, and [`report`]
//! explains (with [`symbols`] from the kernel's ELF); [`dump`] writes and
//! reads the ELF core dumps that gdb opens and [`resume`] goes on from.

pub mod boot;
pub mod checkpoint;
pub mod cli;
pub mod dump;
pub mod harness;
pub mod kimage;
pub mod layout;
pub mod oracle;
pub mod pages;
pub mod pingpong;
pub mod report;
pub mod resume;
pub mod scenario;
pub mod serial;
pub mod snapshot;
pub mod symbols;
pub mod vcpu;
pub mod vm;
pub mod watchdog;

/// The guest kernel built by `build.rs`, embedded as the default kernel.
pub static DEFAULT_KERNEL: &[u8] = include_bytes!(env!("KJUMP_GUEST_KERNEL"));

/// Guest RAM: mmap-backed, with vm-memory's bitmap recording the writes the
/// VMM itself makes (KVM's dirty log records the guest's).
pub type GuestMem = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
