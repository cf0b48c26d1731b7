//! The hibernation image is a dump: `kjump inspect` and `kjump diff` read
//! it ([`CoreFile`]), and kernel A's logical view of it becomes a dump gdb
//! opens ([`image_view_state`], written with [`write_dump`]).
//!
//! The image on the disk is physical: A's RAM outside B's region as B
//! found it, A's pages of B's region parked in the kimage's source pages.
//! A diff against a dump of A, and gdb, want A's pages at their home
//! addresses: [`crate::hibimage::ImageView`] reads them there.

use kjump_abi::arch::{MSR_CSTAR, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_SFMASK, MSR_STAR};
use kjump_abi::control;

use super::*;
use crate::hibimage::{DiskImage, DiskImageError, ImageView, SavedRegisters};

/// A file `inspect` and `diff` read: a kjump dump, or an image in the
/// hibernation image format (a resumable image, or an image not marked
/// resumable such as a vmcore).
#[derive(Debug)]
pub enum CoreFile {
    Dump(Box<Dump>),
    Image(Box<DiskImage>),
}

/// Why a core file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CoreFileError {
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error("{}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: DiskImageError,
    },
}

impl CoreFile {
    /// Reads `path`: as an image when its first note is the KJUMP image
    /// note, else as a dump; either way every check of its reader.
    pub fn open(path: &Path) -> Result<Self, CoreFileError> {
        Self::open_with(path, DiskImage::open_any)
    }

    /// [`CoreFile::open`] for `kjump diff`: an image whose ranges fail
    /// their checksum is read anyway ([`DiskImage::open_to_compare`]), the
    /// failures among the differences.
    pub fn open_to_compare(path: &Path) -> Result<Self, CoreFileError> {
        Self::open_with(path, DiskImage::open_to_compare)
    }

    fn open_with(
        path: &Path,
        open_image: fn(&Path) -> Result<DiskImage, DiskImageError>,
    ) -> Result<Self, CoreFileError> {
        if DiskImage::is_image(path) {
            let img = open_image(path).map_err(|source| CoreFileError::Image {
                path: path.to_owned(),
                source,
            })?;
            Ok(Self::Image(Box::new(img)))
        } else {
            Ok(Self::Dump(Box::new(read_dump(path)?)))
        }
    }

    /// Guest RAM the file describes, for bounding a kernel file.
    pub fn mem_bound(&self) -> u64 {
        match self {
            Self::Dump(d) => d.meta().mem_size,
            Self::Image(i) => i.ranges().last().map_or(0, |r| r.start + r.len),
        }
    }
}

fn flags_text(flags: u32) -> String {
    let mut t = format!("{flags:#x}");
    t.push_str(if flags & kjump_abi::hibimage::FLAG_RESUMABLE != 0 {
        " (resumable)"
    } else if flags & kjump_abi::hibimage::FLAG_VMCORE != 0 {
        " (vmcore, not resumable)"
    } else {
        " (not resumable)"
    });
    t
}

/// `kjump inspect` of an image: header, flags, entry, every range with its
/// checksum (all verified on reading), the registers it carries, kernel
/// A's view (its control page and parked pages), the notes.
pub fn inspect_image(img: &DiskImage) -> String {
    let mut o = String::new();
    if img.is_vmcore() {
        let _ = writeln!(
            o,
            "kjump vmcore {} (an image of kind vmcore: a crashed kernel's memory, not resumable)",
            img.path().display()
        );
    } else {
        let _ = writeln!(
            o,
            "kjump hibernation image {} ({})",
            img.path().display(),
            img.kind()
        );
    }
    let _ = writeln!(
        o,
        "  ELF64 core, x86_64, image {} bytes ({} program headers) in a file of {} bytes, image header version {}",
        img.image_size(),
        img.ranges().len() + 1,
        img.file_size(),
        kjump_abi::hibimage::VERSION
    );
    let _ = writeln!(
        o,
        "  entry {:#x}, flags {}",
        img.entry(),
        flags_text(img.flags())
    );
    let _ = writeln!(
        o,
        "ranges: {}, {} pages, every checksum verified",
        img.ranges().len(),
        img.pages()
    );
    for (i, r) in img.ranges().iter().enumerate() {
        let _ = writeln!(
            o,
            "  range {i} [{:#x}..{:#x}) {}, checksum {:#018x}, at file offset {:#x}",
            r.start,
            r.start + r.len,
            size_text(r.len),
            r.checksum,
            img.data_offset(i)
        );
    }
    match img.registers() {
        Some(regs) => {
            let _ = writeln!(o, "registers: {}", regs.source());
            for row in regs.named().chunks(4) {
                o.push(' ');
                for (n, v) in row {
                    let _ = write!(o, " {n:>14} {v:#018x}");
                }
                o.push('\n');
            }
        }
        None => o.push_str("registers: none (no NT_PRSTATUS note, not resumable)\n"),
    }
    match img.view() {
        Ok(v) => match v.control_range() {
            Some((c0, c1)) => {
                let _ = writeln!(
                    o,
                    "kernel a's view: control pages [{c0:#x}..{c1:#x}), {} page(s) parked by its kimage in source pages (read at home by `kjump diff` and `kjump image view`)",
                    v.parked_pages()
                );
            }
            None => o.push_str(
                "kernel a's view: its pages in place (a vmcore: the entry is a's rip at its death, no kimage to walk)\n",
            ),
        },
        Err(e) if img.resumable() => {
            let _ = writeln!(o, "{e}");
        }
        Err(_) => {}
    }
    notes_text(&mut o, img.notes());
    o
}

/// [`inspect_image`] as JSON: `file`, `format` ("kjump-image"),
/// `image_size`, `file_size`, `entry`, `flags`, `kind` ("vmcore",
/// "resumable image", ...), `resumable`, `vmcore`, `ranges` (`start`,
/// `len`, `checksum`, `file_offset`), `registers` (`source`, `values`, or
/// null), `view` (`control`, null for a vmcore, and `parked_pages`; or
/// null), `notes`.
pub fn inspect_image_json(img: &DiskImage) -> serde_json::Value {
    let ranges: Vec<_> = img
        .ranges()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({"start": r.start, "len": r.len, "checksum": r.checksum, "file_offset": img.data_offset(i)})
        })
        .collect();
    let registers = img.registers().map(|r| {
        let values: serde_json::Map<_, _> = r
            .named()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), json!(v)))
            .collect();
        json!({"source": r.source(), "values": values})
    });
    let view = img.view().ok().map(|v| {
        let control = v.control_range().map(|(c0, c1)| [c0, c1]);
        json!({"control": control, "parked_pages": v.parked_pages()})
    });
    json!({
        "file": img.path().display().to_string(),
        "format": "kjump-image",
        "version": kjump_abi::hibimage::VERSION,
        "image_size": img.image_size(),
        "file_size": img.file_size(),
        "entry": img.entry(),
        "flags": img.flags(),
        "kind": img.kind(),
        "resumable": img.resumable(),
        "vmcore": img.is_vmcore(),
        "ranges": ranges,
        "registers": registers,
        "view": view,
        "notes": img.notes(),
    })
}

/// The value a [`VcpuState`] holds for one of the names of
/// [`SavedRegisters::named`]; `None` for a name it has no field for.
pub fn state_value(s: &VcpuState, name: &str) -> Option<u64> {
    let sr = &s.sregs;
    let sel = |g: &kvm_segment| Some(u64::from(g.selector));
    match name {
        "tr" => sel(&sr.tr),
        "cs" => sel(&sr.cs),
        "ds" => sel(&sr.ds),
        "es" => sel(&sr.es),
        "fs" => sel(&sr.fs),
        "gs" => sel(&sr.gs),
        "ss" => sel(&sr.ss),
        "cr0" => Some(sr.cr0),
        "cr3" => Some(sr.cr3),
        "cr4" => Some(sr.cr4),
        "efer" => Some(sr.efer),
        "fs_base" => Some(sr.fs.base),
        "gs_base" => Some(sr.gs.base),
        "gdtr.limit" => Some(sr.gdt.limit.into()),
        "gdtr.base" => Some(sr.gdt.base),
        "idtr.limit" => Some(sr.idt.limit.into()),
        "idtr.base" => Some(sr.idt.base),
        "kernel_gs_base" => s.msrs.get(&MSR_KERNEL_GS_BASE).copied(),
        "star" => s.msrs.get(&MSR_STAR).copied(),
        "lstar" => s.msrs.get(&MSR_LSTAR).copied(),
        "cstar" => s.msrs.get(&MSR_CSTAR).copied(),
        "sfmask" => s.msrs.get(&MSR_SFMASK).copied(),
        n => s
            .general_regs()
            .iter()
            .find(|(g, _)| *g == n)
            .map(|&(_, v)| v),
    }
}

/// The registers of an image against a dump's vCPU: each register the
/// image carries that the dump has a field for. None is excused: A's
/// relocation code stores the checkpoint's answer over the saved `rax`,
/// so A's saved context holds A exactly as its checkpoint left it, as a
/// suspend dump does (and a vmcore's `NT_PRSTATUS`, built from that
/// context, too).
fn register_diffs_with(regs: &SavedRegisters, dump: &Dump, image_first: bool) -> Vec<RegisterDiff> {
    regs.named()
        .into_iter()
        .filter_map(|(name, v)| {
            let d = state_value(dump.state(), name)?;
            let (old, new) = if image_first { (v, d) } else { (d, v) };
            (v != d).then(|| RegisterDiff {
                name: name.to_owned(),
                old: FieldValue::U64(old),
                new: FieldValue::U64(new),
            })
        })
        .collect()
}

/// What differs between an image and a dump (in the order given): kernel
/// A's view of the image ([`DiskImage::view`]) against the dump's RAM,
/// page by page at A's home addresses, except A's control pages and its
/// kimage's source pages (which hold A's parked pages in the image and
/// what A loaded for B in A's memory); and the image's registers against
/// the dump's vCPU. A vmcore's view is its pages in place; the dump's RAM
/// it does not hold is a difference but for the region A reserved for the
/// capture kernel (`crashkernel=` on A's command line in the dump), which
/// is neither in the vmcore nor compared. An image without a view (not
/// resumable) is compared as it lies. Ranges that failed their checksum
/// ([`DiskImage::open_to_compare`]) are differences too.
pub fn diff_image_dump(
    img: &DiskImage,
    dump: &Dump,
    image_first: bool,
    symbols: Option<&Symbols>,
) -> DumpDiff {
    let names = (
        img.path().display().to_string(),
        dump.path().display().to_string(),
    );
    let (a, b) = if image_first {
        names
    } else {
        (names.1, names.0)
    };
    let mut out = DumpDiff::between(a, b);
    checksum_problems(img, &mut out);
    if img.is_vmcore() {
        if img.entry() != dump.state().regs.rip {
            out.meta.push(format!(
                "entry: vmcore {:#x} (a's rip at its death), dump's rip {:#x}",
                img.entry(),
                dump.state().regs.rip
            ));
        }
    } else if img.entry() != dump.meta().jump_back_entry {
        out.meta.push(format!(
            "entry: image {:#x}, dump's jump-back entry {:#x}",
            img.entry(),
            dump.meta().jump_back_entry
        ));
    }
    if let Some(regs) = img.registers() {
        out.meta.push(format!("image registers: {}", regs.source()));
        out.registers = register_diffs_with(&regs, dump, image_first);
    }
    let view = img.view();
    let ram: &dyn RamSource = match &view {
        Ok(v) => {
            out.meta.push(match v.control_range() {
                Some((c0, c1)) => format!(
                    "image: kernel a's view, {} page(s) read at home from the kimage's source pages; not compared: a's control pages [{c0:#x}..{c1:#x}) and the source pages",
                    v.parked_pages()
                ),
                None => "image: a vmcore, kernel a's pages in place".to_owned(),
            });
            v
        }
        Err(e) => {
            out.meta.push(format!("image: compared as it lies ({e})"));
            img
        }
    };
    let reserved = if img.is_vmcore() {
        vmcore_coverage(img, dump, symbols, &mut out)
    } else {
        None
    };
    let compared = |page: u64| {
        view.as_ref()
            .map_or(true, |v: &ImageView<'_>| v.is_own(page))
            && !reserved.is_some_and(|(s, e)| (s..e).contains(&page))
    };
    let (x, y): (&dyn RamSource, &dyn RamSource) = if image_first {
        (ram, dump)
    } else {
        (dump, ram)
    };
    // A vmcore's ranges were accounted for above.
    if !img.is_vmcore() {
        ram_ranges_problem(x, y, &mut out);
    }
    diff_ram(x, y, &compared, symbols, &mut out);
    out
}

/// Each range of `img` that failed its checksum, as a problem.
fn checksum_problems(img: &DiskImage, out: &mut DumpDiff) {
    for e in img.checksum_failures() {
        out.problems.push(format!("{}: {e}", img.path().display()));
    }
}

/// The RAM of `dump` the vmcore `img` does not hold, and the RAM it holds
/// the dump does not: problems, each run named by its first page, but for
/// the region kernel A reserved for the capture kernel (found on A's
/// command line in the dump, `crashkernel=SIZE@ADDR`): the capture kernel
/// ran there and it was never A's, so it is left out of the vmcore and
/// of the comparison (said in `meta`). Returns that region.
fn vmcore_coverage(
    img: &DiskImage,
    dump: &Dump,
    symbols: Option<&Symbols>,
    out: &mut DumpDiff,
) -> Option<(u64, u64)> {
    let mut line = vec![0u8; kjump_abi::layout::CMDLINE_MAX as usize];
    let reserved = dump
        .read_ram(kjump_abi::layout::CMDLINE, &mut line)
        .ok()
        .and_then(|()| kjump_abi::cmdline::from_nul_terminated(&line).ok())
        .and_then(kjump_abi::vmcore::crashkernel);
    let (vmcore, ram) = (img.ram_ranges(), dump.ram_ranges());
    let named = |a: u64| {
        symbols
            .and_then(|s| s.lookup(a))
            .map_or(String::new(), |s| format!(" {s}"))
    };
    let mut excused = 0;
    for (start, end) in uncovered(&ram, &vmcore) {
        let mut runs = vec![(start, end)];
        if let Some((rs, re)) = reserved {
            let (s, e) = (start.max(rs), end.min(re));
            if s < e {
                excused += (e - s) / PAGE_SIZE as u64;
                runs = [(start, s), (e, end)]
                    .into_iter()
                    .filter(|(a, b)| a < b)
                    .collect();
            }
        }
        for (s, e) in runs {
            out.problems.push(format!(
                "{} page(s) missing from the vmcore, from {s:#x}{}: the dump's [{s:#x}..{e:#x})",
                (e - s) / PAGE_SIZE as u64,
                named(s)
            ));
        }
    }
    for (s, e) in uncovered(&vmcore, &ram) {
        out.problems.push(format!(
            "{} page(s) in the vmcore only, from {s:#x}: [{s:#x}..{e:#x}) is not in the dump",
            (e - s) / PAGE_SIZE as u64
        ));
    }
    match reserved {
        Some((s, e)) => out.meta.push(format!(
            "not compared: [{s:#x}..{e:#x}), the region kernel a reserved for the capture kernel ({}=SIZE@ADDR on its command line): never a's memory, the capture kernel ran there; {excused} page(s) of the dump there are not in the vmcore",
            kjump_abi::vmcore::CRASHKERNEL_KEY
        )),
        None => out.meta.push(format!(
            "no {}=SIZE@ADDR on the dump's command line at {:#x}: no region is excused",
            kjump_abi::vmcore::CRASHKERNEL_KEY,
            kjump_abi::layout::CMDLINE
        )),
    }
    reserved
}

/// The parts of the ranges `a` (start, length) that no range of `b`
/// covers, as `(start, end)`.
fn uncovered(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, len) in a {
        let mut runs = vec![(start, start + len)];
        for &(bs, bl) in b {
            let be = bs + bl;
            runs = runs
                .into_iter()
                .flat_map(|(s, e)| {
                    if be <= s || e <= bs {
                        vec![(s, e)]
                    } else {
                        [(s, bs.max(s)), (be.min(e), e)]
                            .into_iter()
                            .filter(|(x, y)| x < y)
                            .collect()
                    }
                })
                .collect();
        }
        out.extend(runs);
    }
    out
}

/// What differs between two images: header (entry, flags), registers,
/// and memory as each lies on its disk.
pub fn diff_images(a: &DiskImage, b: &DiskImage, symbols: Option<&Symbols>) -> DumpDiff {
    let mut out = DumpDiff::between(
        a.path().display().to_string(),
        b.path().display().to_string(),
    );
    checksum_problems(a, &mut out);
    checksum_problems(b, &mut out);
    if a.entry() != b.entry() {
        out.meta
            .push(format!("entry: {:#x} -> {:#x}", a.entry(), b.entry()));
    }
    if a.flags() != b.flags() {
        out.meta.push(format!(
            "flags: {} -> {}",
            flags_text(a.flags()),
            flags_text(b.flags())
        ));
    }
    if let (Some(ra), Some(rb)) = (a.registers(), b.registers()) {
        let vb: HashMap<&str, u64> = rb.named().into_iter().collect();
        for (n, v) in ra.named() {
            if let Some(&w) = vb.get(n).filter(|&&w| w != v) {
                out.registers.push(RegisterDiff {
                    name: n.to_owned(),
                    old: FieldValue::U64(v),
                    new: FieldValue::U64(w),
                });
            }
        }
    }
    ram_ranges_problem(a, b, &mut out);
    diff_ram(a, b, &|_| true, symbols, &mut out);
    out
}

/// The vCPU state of a gdb-ready dump of an image's kernel A: the
/// registers the image carries (A's saved context: general registers,
/// flags, control registers, EFER, descriptor tables, segment selectors,
/// FS/GS bases, the SYSCALL MSRs, and the FXSAVE area beside the context;
/// or an `NT_PRSTATUS` note's), `rip` at `rip` (the instruction A's
/// re-entry path resumes at: its checkpoint). Every other field is zero:
/// the dump it goes in is marked not resumable.
pub fn image_view_state(img: &DiskImage, rip: u64) -> VcpuState {
    let mut s = VcpuState::default();
    let Some(regs) = img.registers() else {
        return s;
    };
    for (name, v) in regs.named() {
        let (r, sr) = (&mut s.regs, &mut s.sregs);
        let sel = |g: &mut kvm_segment| g.selector = v as u16;
        match name {
            "rax" => r.rax = v,
            "rbx" => r.rbx = v,
            "rcx" => r.rcx = v,
            "rdx" => r.rdx = v,
            "rsi" => r.rsi = v,
            "rdi" => r.rdi = v,
            "rbp" => r.rbp = v,
            "rsp" => r.rsp = v,
            "r8" => r.r8 = v,
            "r9" => r.r9 = v,
            "r10" => r.r10 = v,
            "r11" => r.r11 = v,
            "r12" => r.r12 = v,
            "r13" => r.r13 = v,
            "r14" => r.r14 = v,
            "r15" => r.r15 = v,
            "rip" => r.rip = v,
            "rflags" => r.rflags = v,
            "cr0" => sr.cr0 = v,
            "cr3" => sr.cr3 = v,
            "cr4" => sr.cr4 = v,
            "efer" => sr.efer = v,
            "fs_base" => sr.fs.base = v,
            "gs_base" => sr.gs.base = v,
            "gdtr.limit" => sr.gdt.limit = v as u16,
            "gdtr.base" => sr.gdt.base = v,
            "idtr.limit" => sr.idt.limit = v as u16,
            "idtr.base" => sr.idt.base = v,
            "tr" => sel(&mut sr.tr),
            "cs" => sel(&mut sr.cs),
            "ds" => sel(&mut sr.ds),
            "es" => sel(&mut sr.es),
            "fs" => sel(&mut sr.fs),
            "gs" => sel(&mut sr.gs),
            "ss" => sel(&mut sr.ss),
            "kernel_gs_base" => {
                s.msrs.insert(MSR_KERNEL_GS_BASE, v);
            }
            "star" => {
                s.msrs.insert(MSR_STAR, v);
            }
            "lstar" => {
                s.msrs.insert(MSR_LSTAR, v);
            }
            "cstar" => {
                s.msrs.insert(MSR_CSTAR, v);
            }
            "sfmask" => {
                s.msrs.insert(MSR_SFMASK, v);
            }
            _ => {}
        }
    }
    if let SavedRegisters::Context { control_page, .. } = regs {
        s.regs.rip = rip;
        let mut fx = [0u8; FXSAVE_SIZE];
        if img
            .read_ram(control_page + control::FXSAVE, &mut fx)
            .is_ok()
        {
            s.xsave[..FXSAVE_SIZE].copy_from_slice(&fx);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::uncovered;

    #[test]
    fn uncovered_is_what_no_range_of_the_other_holds() {
        let dump = [(0, 0x4000), (0x8000, 0x8000)];
        let vmcore = [(0, 0x1000), (0x2000, 0x1000), (0x9000, 0x2000)];
        assert_eq!(
            uncovered(&dump, &vmcore),
            [
                (0x1000, 0x2000),
                (0x3000, 0x4000),
                (0x8000, 0x9000),
                (0xb000, 0x10000)
            ]
        );
        assert_eq!(uncovered(&vmcore, &dump), []);
        assert_eq!(uncovered(&dump, &dump), []);
        assert_eq!(uncovered(&dump, &[]), [(0, 0x4000), (0x8000, 0x10000)]);
    }
}
