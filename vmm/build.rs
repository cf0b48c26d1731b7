//! Builds the guest kernel for `x86_64-unknown-none` and hands its path to
//! the `kjump` crate (`KJUMP_GUEST_KERNEL`), which embeds it as the default
//! kernel; and the same kernel linked at another address
//! (`KJUMP_GUEST_KERNEL_ALT`, a path for the tests), a restore kernel for
//! hibernate that is not the kernel it restores.
//!
//! Cargo does not install the targets named in `rust-toolchain.toml`, so this
//! script adds `x86_64-unknown-none` with rustup when it is missing: the
//! README's two commands then work on a fresh machine.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let shared_dir = manifest_dir.join("../guest-abi");
    let guest_dir = manifest_dir.join("../guest-kernel");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());

    println!("cargo:rerun-if-changed={}", guest_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        shared_dir.join("src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("Cargo.lock").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("build.rs").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("linker.ld").display()
    );
    println!("cargo:rerun-if-env-changed=KJUMP_GUEST_KERNEL_PREBUILT");

    // A prebuilt kernel (for packagers); otherwise build it. (No second
    // kernel then: the tests that restore with it say they skip.)
    if let Some(p) = env::var_os("KJUMP_GUEST_KERNEL_PREBUILT") {
        println!(
            "cargo:rustc-env=KJUMP_GUEST_KERNEL={}",
            Path::new(&p).display()
        );
        println!("cargo:rustc-env=KJUMP_GUEST_KERNEL_ALT=");
        return;
    }

    ensure_target(&rustc);

    let kernel = build_guest(&cargo, &guest_dir, &out_dir.join("guest"), None);
    println!("cargo:rustc-env=KJUMP_GUEST_KERNEL={}", kernel.display());
    // The same kernel linked at another address: hibernate's tests restore
    // with it, so that the restore kernel really is not the kernel it
    // restores. (A second link of a small no_std kernel: a few seconds.)
    let alt = build_guest(
        &cargo,
        &guest_dir,
        &out_dir.join("guest-alt"),
        Some(ALT_KERNEL_BASE),
    );
    println!("cargo:rustc-env=KJUMP_GUEST_KERNEL_ALT={}", alt.display());
}

/// Where the second kernel is linked: above the first (at 2 MiB, ending
/// well below 6 MiB), inside B's region, which a restore kernel keeps to.
const ALT_KERNEL_BASE: &str = "0x600000";

/// Builds the guest kernel into `target_dir`, linked at `base` (the
/// kernel's default when `None`); returns its path.
fn build_guest(
    cargo: &std::ffi::OsStr,
    guest_dir: &Path,
    target_dir: &Path,
    base: Option<&str>,
) -> PathBuf {
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bin", "kjump-kernel", "--profile", "guest"])
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Crelocation-model=static", "-Cforce-frame-pointers=yes"].join("\x1f"),
        );
    match base {
        Some(b) => cmd.env("KJUMP_KERNEL_BASE", b),
        None => cmd.env_remove("KJUMP_KERNEL_BASE"),
    };
    // Nothing of the outer build's configuration may leak into the guest's.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "CARGO_ENCODED_RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
        {
            cmd.env_remove(&*k);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest kernel: {e}"));
    if !status.success() {
        panic!("building the guest kernel for {TARGET} failed (see the errors above)");
    }
    let kernel = target_dir.join(TARGET).join("guest").join("kjump-kernel");
    assert!(
        kernel.exists(),
        "guest kernel not found at {}",
        kernel.display()
    );
    kernel
}

/// Installs the target with rustup when the toolchain lacks its standard
/// library.
fn ensure_target(rustc: &std::ffi::OsStr) {
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let have = |s: &Path| s.join("lib/rustlib").join(TARGET).join("lib").is_dir();
    if sysroot.as_deref().is_some_and(have) {
        return;
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", TARGET]);
    if let Ok(tc) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &tc]);
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (needed for the guest kernel)"
    );
    match cmd.status() {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it by hand"
        ),
    }
}
