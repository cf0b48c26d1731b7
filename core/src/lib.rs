//! kjump-core: everything kjump knows about a guest that does not need KVM.
//!
//! A checkpoint's capture is a [`state::MachineState`] (every vCPU's state,
//! every device's state) plus guest RAM ([`GuestMem`]). The
//! [`oracle::Oracle`] owns every kernel's record and view and judges those
//! values: "record this suspend", "check this resume", "check the kernels
//! that are away". [`pages`] stores guest pages content-addressed and keeps
//! the shadow of RAM, [`kimage`] walks a guest's kimage to know where its
//! pages are parked, [`symbols`] names addresses, [`report`] explains, and
//! [`dump`] writes, reads, inspects and diffs the ELF core dumps that gdb
//! opens. [`harness`] decodes the guest's harness messages and [`image`]
//! checks and places a kernel image: the parsers of untrusted bytes, which
//! the fuzz targets exercise. [`text`] escapes the guest's text before it
//! is printed.
//!
//! Nothing here names kvm-ioctls, clap or the guest build, so all of it is
//! unit-tested on any machine; the VMM (`kjump`) captures the values from
//! KVM and hands them in.

pub mod checkpoint;
pub mod devices;
pub mod dump;
pub mod files;
pub mod harness;
pub mod hibimage;
pub mod image;
pub mod kimage;
pub mod layout;
pub mod msrs;
pub mod oracle;
pub mod pages;
pub mod paging;
pub mod report;
pub mod state;
pub mod symbols;
pub mod text;
pub mod virtio;
pub mod vmcore;
pub mod write_log;

/// Guest RAM: mmap-backed, with vm-memory's bitmap recording the writes the
/// VMM itself makes (KVM's dirty log records the guest's), summarised so
/// that harvesting it costs what was written ([`write_log::WriteLog`]).
pub type GuestMem = vm_memory::GuestMemoryMmap<write_log::WriteLog>;
