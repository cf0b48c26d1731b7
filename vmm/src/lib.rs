//! kjump: a KVM harness that proves kexec jump right.

/// The guest kernel built by `build.rs`, embedded as the default kernel.
pub static DEFAULT_KERNEL: &[u8] = include_bytes!(env!("KJUMP_GUEST_KERNEL"));
