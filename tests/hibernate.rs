//! Hibernation through kexec jump, as far as it is built: A jumps to B, B
//! saves A's image onto the virtio-blk disk and powers off, and the VMM
//! checks the image on the disk against its record of A. The restore (a
//! fresh VM, kernel C) is not built, so `--scenario hibernate` is refused
//! and these tests drive the save half through the library.

mod common;

use common::{assert_exit, kjump, kvm_or_skip, scratch};
use kjump::config::{RunConfig, Scenario};
use kjump::scenario::hibernate::save;
use kjump::scenario::{RunOptions, Verdict};
use kjump_abi::hibimage::Header;

fn config(disk: &std::path::Path) -> RunConfig {
    RunConfig {
        scenario: Scenario::Hibernate,
        mem: 64 << 20,
        disk: Some(disk.to_owned()),
        ..RunConfig::default()
    }
}

#[test]
fn b_saves_a_and_the_image_on_the_disk_is_a_as_it_left() {
    if !kvm_or_skip("b_saves_a_and_the_image_on_the_disk_is_a_as_it_left") {
        return;
    }
    let disk = scratch("hibernate-save").join("disk.raw");
    let (outcome, saved) =
        save(&config(&disk), &RunOptions::default()).expect("the save half runs");
    assert_eq!(outcome.verdict, Verdict::Pass, "{}", outcome.summary());
    // Every page of A's view was found in the image: all RAM but A's
    // control and source pages (64 MiB = 16384 pages).
    assert!(saved.pages_checked > 16384 - 4096, "{saved:?}");
    // B's region (8 MiB from 1 MiB) is not in the image.
    assert_eq!(saved.image_pages, 16384 - 2048, "{saved:?}");

    // The disk holds a resumable ELF core entered at A's re-entry point.
    let bytes = std::fs::read(&disk).unwrap();
    let h = Header::parse(&bytes).expect("a valid image header");
    assert_eq!(h.entry, saved.entry);
    let r: Vec<_> = h.ranges().map(|r| (r.start, r.len)).collect();
    assert_eq!(r, [(0, 1 << 20), (9 << 20, 55 << 20)]);
}

#[test]
fn the_cli_still_refuses_the_scenario_the_restore_of_which_is_not_built() {
    let (_, err) = assert_exit(&kjump(&["--scenario", "hibernate"]), 2);
    assert!(err.contains("scenario hibernate is not built yet"), "{err}");
}

#[test]
fn a_page_b_leaves_out_of_the_image_is_named_by_the_disk_check() {
    if !kvm_or_skip("a_page_b_leaves_out_of_the_image_is_named_by_the_disk_check") {
        return;
    }
    let disk = scratch("hibernate-skip").join("disk.raw");
    let mut cfg = config(&disk);
    cfg.inject = Some(kjump::faults::Injection::parse("b:image-skip-page", None).unwrap());
    let (outcome, _) = save(&cfg, &RunOptions::default()).expect("the save half runs");
    let Verdict::Fail(why) = &outcome.verdict else {
        panic!("passed: {}", outcome.summary());
    };
    assert!(
        why.starts_with("1 page(s) of kernel a's image on the disk differ from its record"),
        "{why}"
    );
    let m = &outcome.report.mismatches;
    assert_eq!(m.len(), 1, "{m:?}");
    // The first page of a's with data above b's region (which b says it
    // left out), at home there, found as zeros on the disk.
    let page = m[0].address.expect("a page");
    assert!(page >= 9 << 20 && page % 4096 == 0, "{m:?}");
    assert_eq!(m[0].location, Some(page), "{m:?}");
    assert_eq!(m[0].actual, "0".repeat(32), "{m:?}");
    assert!(
        m[0].note.as_deref().unwrap().ends_with(&format!(
            "holds kernel a's page {page:#x} (at {page:#x}) other than it was left"
        )),
        "{m:?}"
    );
    assert!(why.contains(&format!("{page:#x}")), "{why}");
    assert_eq!(outcome.exit_code(), 1);
}

#[test]
fn a_fault_of_another_scenario_is_refused() {
    let disk = scratch("hibernate-refuse").join("disk.raw");
    let mut cfg = config(&disk);
    cfg.inject = Some(kjump::faults::Injection::parse("flip-a", None).unwrap());
    let e = save(&cfg, &RunOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a fault of --scenario hibernate"),
        "{e}"
    );
    let (_, err) = assert_exit(
        &kjump(&["--scenario", "ping-pong", "--inject", "b:image-skip-page"]),
        2,
    );
    assert!(err.contains("needs --scenario hibernate"), "{err}");
}
