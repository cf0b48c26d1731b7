//! The virtio-blk disk: a guest driver writes sectors through the VMM's
//! virtio-mmio device into a raw host file and reads them back.

mod common;

use common::{assert_exit, kjump, kvm_or_skip, scratch};
use kjump_abi::virtio::{BOOT_CHECK_SECTOR, BOOT_CHECK_SECTORS, SECTOR_SIZE, boot_check_byte};

#[test]
fn the_boot_scenario_writes_sectors_into_the_disk_file_and_reads_them_back() {
    if !kvm_or_skip("the_boot_scenario_writes_sectors_into_the_disk_file_and_reads_them_back") {
        return;
    }
    let disk = scratch("disk-boot").join("disk.raw");
    // A file that is not there is created with the scenario's size.
    let (out, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--disk", disk.to_str().unwrap()]),
        0,
    );
    assert!(
        out.contains("[a] virtio-blk: 2048 sectors; wrote 4 sectors at 1 and read them back"),
        "{out}\n{err}"
    );
    assert!(
        err.contains("boot: pass") || out.contains("boot: pass"),
        "{out}\n{err}"
    );

    // The bytes are in the file where the sectors are, and nothing else
    // was written.
    let bytes = std::fs::read(&disk).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    let start = (BOOT_CHECK_SECTOR * SECTOR_SIZE) as usize;
    let len = (BOOT_CHECK_SECTORS * SECTOR_SIZE) as usize;
    for (i, b) in bytes[start..start + len].iter().enumerate() {
        assert_eq!(*b, boot_check_byte(i as u64), "byte {i} of the check");
    }
    assert!(bytes[..start].iter().all(|&b| b == 0));
    assert!(bytes[start + len..].iter().all(|&b| b == 0));

    // An existing file is used as it is: its size is the disk's.
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    let (out, _) = assert_exit(
        &kjump(&["--scenario", "boot", "--disk", disk.to_str().unwrap()]),
        0,
    );
    assert!(out.contains("[a] virtio-blk: 64 sectors;"), "{out}");
}

#[test]
fn without_disk_the_boot_scenario_gets_a_temporary_one() {
    if !kvm_or_skip("without_disk_the_boot_scenario_gets_a_temporary_one") {
        return;
    }
    let (out, _) = assert_exit(&kjump(&["--scenario", "boot"]), 0);
    assert!(
        out.contains("[a] virtio-blk: 2048 sectors; wrote 4 sectors at 1 and read them back"),
        "{out}"
    );
}

#[test]
fn a_disk_file_that_is_not_whole_sectors_is_refused_before_the_guest_boots() {
    let dir = scratch("disk-bad");
    let disk = dir.join("odd.raw");
    std::fs::write(&disk, [0u8; 1000]).unwrap();
    let (out, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--disk", disk.to_str().unwrap()]),
        2,
    );
    assert_eq!(
        err.trim_end(),
        format!(
            "kjump: error: the disk file {} is 1000 bytes: a disk is whole 512-byte sectors",
            disk.display()
        )
    );
    assert!(!out.contains("[a]"), "the guest booted:\n{out}");
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "boot", "--disk", dir.to_str().unwrap()]),
        2,
    );
    assert_eq!(
        err.trim_end(),
        format!("kjump: error: {} is not a regular file", dir.display())
    );
}
