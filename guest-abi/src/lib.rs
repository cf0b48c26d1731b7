//! What the kjump VMM and the kjump guest kernel must agree on, compiled by
//! both: the harness port and its messages, the guest-physical layout, the
//! x86 numbers both use, the command line, the newc cpio reader and the kimage indirection list.
//!
//! Everything here is plain logic without I/O, so the host unit-tests it and
//! the guest (`x86_64-unknown-none`) links the very same code.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod arch;
pub mod bootparams;
pub mod cmdline;
pub mod control;
pub mod cpio;
pub mod elf;
pub mod fault;
pub mod frames;
pub mod hibimage;
pub mod kimage;
pub mod layout;
pub mod textbuf;
pub mod virtio;
pub mod vmcore;
