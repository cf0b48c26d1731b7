//! Links the kernel binary with its linker script (only for the bare-metal
//! target; on the host only the shared library builds), at the address
//! `KJUMP_KERNEL_BASE` names (hex; 2 MiB when unset): the VMM's build
//! makes a second kernel linked elsewhere, so that hibernate's restore
//! kernel can really differ from the kernel it restores.

/// Where the kernel is linked unless `KJUMP_KERNEL_BASE` says otherwise.
const DEFAULT_BASE: u64 = 0x20_0000;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    println!("cargo:rerun-if-changed={dir}/linker.ld");
    println!("cargo:rerun-if-env-changed=KJUMP_KERNEL_BASE");
    let base = match std::env::var("KJUMP_KERNEL_BASE") {
        Ok(v) => u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("KJUMP_KERNEL_BASE={v:?} is not a hex address")),
        Err(_) => DEFAULT_BASE,
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=--defsym=KJUMP_KERNEL_BASE={base:#x}");
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
}
