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
        if DiskImage::is_image(path) {
            let img = DiskImage::open_any(path).map_err(|source| CoreFileError::Image {
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
    let _ = writeln!(o, "kjump hibernation image {}", img.path().display());
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
        Ok(v) => {
            let (c0, c1) = v.control_range();
            let _ = writeln!(
                o,
                "kernel a's view: control pages [{c0:#x}..{c1:#x}), {} page(s) parked by its kimage in source pages (read at home by `kjump diff` and `kjump image view`)",
                v.parked_pages()
            );
        }
        Err(e) if img.resumable() => {
            let _ = writeln!(o, "{e}");
        }
        Err(_) => {}
    }
    notes_text(&mut o, img.notes());
    o
}

/// [`inspect_image`] as JSON: `file`, `format` ("kjump-image"),
/// `image_size`, `file_size`, `entry`, `flags`, `resumable`, `ranges`
/// (`start`, `len`, `checksum`, `file_offset`), `registers` (`source`,
/// `values`, or null), `view` (`control`, `parked_pages`, or null),
/// `notes`.
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
        let (c0, c1) = v.control_range();
        json!({"control": [c0, c1], "parked_pages": v.parked_pages()})
    });
    json!({
        "file": img.path().display().to_string(),
        "format": "kjump-image",
        "version": kjump_abi::hibimage::VERSION,
        "image_size": img.image_size(),
        "file_size": img.file_size(),
        "entry": img.entry(),
        "flags": img.flags(),
        "resumable": img.resumable(),
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
/// the dump's vCPU. An image without a view (not resumable) is compared
/// as it lies.
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
    if img.entry() != dump.meta().jump_back_entry {
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
            let (c0, c1) = v.control_range();
            out.meta.push(format!(
                "image: kernel a's view, {} page(s) read at home from the kimage's source pages; not compared: a's control pages [{c0:#x}..{c1:#x}) and the source pages",
                v.parked_pages()
            ));
            v
        }
        Err(e) => {
            out.meta.push(format!("image: compared as it lies ({e})"));
            img
        }
    };
    let own = |page: u64| {
        view.as_ref()
            .map_or(true, |v: &ImageView<'_>| v.is_own(page))
    };
    if image_first {
        diff_ram(ram, dump, &own, symbols, &mut out);
    } else {
        diff_ram(dump, ram, &own, symbols, &mut out);
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
