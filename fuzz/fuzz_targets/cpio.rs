//! The newc cpio reader kernel A runs on its initramfs (and the VMM on an
//! initramfs given with `--initramfs`).
//!
//! Asserts, on the raw input: every entry (name and data) lies inside the
//! archive, 4-byte aligned as newc pads; there are never more entries than
//! headers fit; after an error the reader stops; error offsets lie in the
//! archive; `find` agrees with iterating. And, on an archive built from the
//! input with `write_header`: the reader returns exactly the entries that
//! were written, whatever follows the trailer.
#![no_main]

use kjump_abi::cpio::{CpioError, Entry, HEADER_LEN, Reader, TRAILER, write_header};
use kjump_fuzz::{offset_in, within};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hostile(data);
    let _ = round_trip(data);
});

fn error_offset(e: CpioError) -> Option<usize> {
    match e {
        CpioError::BadMagic(o)
        | CpioError::BadField(o)
        | CpioError::Truncated(o)
        | CpioError::BadName(o) => Some(o),
        CpioError::NoTrailer => None,
    }
}

fn hostile(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut error = None;
    for item in reader.by_ref() {
        match item {
            Ok(e) => {
                assert!(within(data, e.data), "entry data outside the archive");
                assert!(within(data, e.name.as_bytes()), "name outside the archive");
                let (name_at, data_at) =
                    (offset_in(data, e.name.as_bytes()), offset_in(data, e.data));
                assert!(name_at >= HEADER_LEN, "name overlaps its header");
                assert_eq!((name_at - HEADER_LEN) % 4, 0, "header not 4-byte aligned");
                assert_eq!(data_at % 4, 0, "data not 4-byte aligned");
                assert!(
                    data_at > name_at + e.name.len(),
                    "data overlaps the name and NUL"
                );
                assert_ne!(e.name, TRAILER, "the trailer is not an entry");
                entries.push(e);
                // Each entry has its own header of at least 110 bytes.
                assert!(entries.len() * HEADER_LEN <= data.len());
            }
            Err(e) => {
                if let Some(o) = error_offset(e) {
                    assert!(o <= data.len(), "{e}: offset past the archive");
                }
                assert!(!e.to_string().contains('\n'));
                error = Some(e);
            }
        }
    }
    assert_eq!(reader.next(), None, "the reader goes on after its end");
    // Entries follow each other.
    for w in entries.windows(2) {
        assert!(offset_in(data, w[0].data) < offset_in(data, w[1].name.as_bytes()));
    }

    // `find` returns the first regular file of that name met before any
    // error, else the error, else nothing.
    let mut names: Vec<&str> = entries.iter().map(|e| e.name).take(8).collect();
    names.extend(["kjump/kernel-b", "kjump/config", ""]);
    for name in names {
        let want = match entries.iter().find(|e| e.name == name && e.is_file()) {
            Some(e) => Ok(Some(*e)),
            None => error.map_or(Ok(None), Err),
        };
        assert_eq!(Reader::find(data, name), want, "find({name:?})");
    }
}

/// Builds an archive from the input and reads it back.
fn round_trip(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let count = u.int_in_range(0..=8)?;
    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for _ in 0..count {
        let name: String = u.arbitrary()?;
        if name == TRAILER || name.len() > 300 {
            continue;
        }
        let mode: u32 = u.arbitrary()?;
        let len = u.int_in_range(0..=600)?;
        files.push((name, mode, u.bytes(len)?.to_vec()));
    }
    let mut archive = Vec::new();
    let mut push = |name: &str, mode: u32, body: &[u8]| {
        let mut h = [0u8; HEADER_LEN];
        write_header(&mut h, 1, mode, body.len() as u32, name.len() as u32 + 1);
        archive.extend_from_slice(&h);
        archive.extend_from_slice(name.as_bytes());
        archive.push(0);
        archive.resize(archive.len().next_multiple_of(4), 0);
        archive.extend_from_slice(body);
        archive.resize(archive.len().next_multiple_of(4), 0);
    };
    for (name, mode, body) in &files {
        push(name, *mode, body);
    }
    push(TRAILER, 0, &[]);
    // Whatever follows the trailer is not read.
    archive.extend_from_slice(u.take_rest());

    let got: Vec<Entry<'_>> = Reader::new(&archive)
        .collect::<core::result::Result<_, _>>()
        .expect("an archive write_header built reads back");
    assert_eq!(got.len(), files.len());
    for (e, (name, mode, body)) in got.iter().zip(&files) {
        assert_eq!((e.name, e.mode, e.data), (name.as_str(), *mode, &body[..]));
    }
    Ok(())
}
