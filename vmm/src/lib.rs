//! kjump: a KVM harness that proves kexec jump right.
//!
//! The spine: [`cli`] turns the command line into a [`config::RunConfig`];
//! a [`scenario`] drives the guest through its jumps on the [`vm`] (the only
//! code that talks to KVM); at each checkpoint the VM captures a
//! `MachineState` and the scenario hands it, with guest RAM, to the oracle
//! of `kjump_core`, which records and judges; then the checkpoint is
//! recorded in the report and, when asked, dumped. [`gdb`] lets a
//! debugger watch it happen.
//!
//! Dependency rule: `kjump_core` (oracle, page store, kimage walking,
//! symbols, report, dump format) knows nothing of KVM; only [`vm`] names
//! kvm-ioctls; nothing below [`cli`] names clap.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod faults;
pub mod gdb;
pub mod junit;
pub mod progress;
pub mod scenario;
pub mod vm;

pub use kjump_core::GuestMem;

/// The guest kernel built by `build.rs`, embedded as the default kernel.
pub static DEFAULT_KERNEL: &[u8] = include_bytes!(env!("KJUMP_GUEST_KERNEL"));
