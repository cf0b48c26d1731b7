//! The register file gdb sees: gdbstub_arch's x86-64 core and SSE
//! registers (`X86_64_SSE`, in gdb's `64bit-core.xml` and `64bit-sse.xml`
//! order), then `fs_base` and `gs_base` (gdb's `org.gnu.gdb.i386.segments`
//! feature), then the system registers a kernel debugger wants:
//! `k_gs_base`, `cr0`, `cr2`, `cr3`, `cr4`, `cr8`, `efer` (shown by `info
//! all-registers`, or by name).

use gdbstub::arch::{Arch, RegId, Registers};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;

use crate::vm::debug::CpuRegs;

/// x86-64 with SSE, segment bases and system registers.
pub enum KjumpX86_64 {}

impl Arch for KjumpX86_64 {
    type Usize = u64;
    type Registers = Regs;
    type RegId = RegNum;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

/// The extra registers after the core ones, in order.
pub const EXTRA: [&str; 9] = [
    "fs_base",
    "gs_base",
    "k_gs_base",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "cr8",
    "efer",
];
/// Bytes of gdbstub_arch's core and SSE registers.
const CORE_BYTES: usize = 0x218;
/// gdb's register number of the first extra register (after `mxcsr`, 56).
const FIRST_EXTRA: usize = 57;

/// All registers gdb reads and writes at once (`g`/`G`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub core: X86_64CoreRegs,
    /// [`EXTRA`], in order.
    pub extra: [u64; 9],
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for v in self.extra {
            for b in v.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        // All or nothing: a short `G` would zero the control registers.
        if bytes.len() != CORE_BYTES + 8 * EXTRA.len() {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE_BYTES])?;
        for (v, b) in self
            .extra
            .iter_mut()
            .zip(bytes[CORE_BYTES..].chunks_exact(8))
        {
            *v = u64::from_le_bytes(b.try_into().map_err(|_| ())?);
        }
        Ok(())
    }
}

/// A register by gdb's number (single-register access is not offered; gdb
/// reads and writes them all).
#[derive(Clone, Copy, Debug)]
pub enum RegNum {
    Core(X86_64CoreRegId),
    Extra(usize),
}

impl RegId for RegNum {
    fn from_raw_id(id: usize) -> Option<(Self, Option<std::num::NonZeroUsize>)> {
        if id < FIRST_EXTRA {
            X86_64CoreRegId::from_raw_id(id).map(|(r, n)| (Self::Core(r), n))
        } else if id < FIRST_EXTRA + EXTRA.len() {
            Some((
                Self::Extra(id - FIRST_EXTRA),
                std::num::NonZeroUsize::new(8),
            ))
        } else {
            None
        }
    }
}

/// gdb's 64-bit x87 "tag word" from FXSAVE's abridged one: a register in
/// use is tagged valid (00), a free one empty (11). (Zero and special
/// values are not told apart; gdb only shows the word.)
fn full_tag(abridged: u8) -> u32 {
    (0..8).fold(0, |t, i| {
        t | if abridged & (1 << i) != 0 {
            0
        } else {
            3 << (2 * i)
        }
    })
}

fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0, |t, i| {
        t | if (full >> (2 * i)) & 3 != 3 {
            1 << i
        } else {
            0
        }
    })
}

impl Regs {
    /// The registers of the vCPU as gdb lays them out.
    pub fn from_cpu(c: &CpuRegs) -> Self {
        let (r, s, f) = (&c.regs, &c.sregs, &c.fpu);
        let mut core = X86_64CoreRegs {
            regs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            eflags: r.rflags as u32,
            rip: r.rip,
            ..Default::default()
        };
        let seg = &mut core.segments;
        (seg.cs, seg.ss, seg.ds, seg.es, seg.fs, seg.gs) = (
            s.cs.selector.into(),
            s.ss.selector.into(),
            s.ds.selector.into(),
            s.es.selector.into(),
            s.fs.selector.into(),
            s.gs.selector.into(),
        );
        for (st, fpr) in core.st.iter_mut().zip(&f.fpr) {
            st.copy_from_slice(&fpr[..10]);
        }
        core.fpu.fctrl = f.fcw.into();
        core.fpu.fstat = f.fsw.into();
        core.fpu.ftag = full_tag(f.ftwx);
        core.fpu.fioff = f.last_ip as u32;
        core.fpu.fooff = f.last_dp as u32;
        core.fpu.fop = f.last_opcode.into();
        for (x, v) in core.xmm.iter_mut().zip(&f.xmm) {
            *x = u128::from_le_bytes(*v);
        }
        core.mxcsr = f.mxcsr;
        Self {
            core,
            extra: [
                s.fs.base,
                s.gs.base,
                c.kernel_gs_base,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.cr8,
                s.efer,
            ],
        }
    }

    /// `base` with what gdb wrote: the fields these registers hold. A
    /// segment register written by gdb changes its selector only.
    pub fn apply(&self, base: &CpuRegs) -> CpuRegs {
        let mut c = base.clone();
        let (r, s, f) = (&mut c.regs, &mut c.sregs, &mut c.fpu);
        let g = &self.core.regs;
        (
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ) = (
            g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], g[13],
            g[14], g[15],
        );
        r.rip = self.core.rip;
        r.rflags = (r.rflags & !0xffff_ffff) | u64::from(self.core.eflags);
        let seg = &self.core.segments;
        for (sreg, sel) in [
            (&mut s.cs, seg.cs),
            (&mut s.ss, seg.ss),
            (&mut s.ds, seg.ds),
            (&mut s.es, seg.es),
            (&mut s.fs, seg.fs),
            (&mut s.gs, seg.gs),
        ] {
            sreg.selector = sel as u16;
        }
        for (fpr, st) in f.fpr.iter_mut().zip(&self.core.st) {
            fpr[..10].copy_from_slice(st);
        }
        let x = &self.core.fpu;
        f.fcw = x.fctrl as u16;
        f.fsw = x.fstat as u16;
        if x.ftag != full_tag(f.ftwx) {
            f.ftwx = abridged_tag(x.ftag);
        }
        if x.fioff != f.last_ip as u32 {
            f.last_ip = (f.last_ip & !0xffff_ffff) | u64::from(x.fioff);
        }
        if x.fooff != f.last_dp as u32 {
            f.last_dp = (f.last_dp & !0xffff_ffff) | u64::from(x.fooff);
        }
        f.last_opcode = x.fop as u16;
        for (v, x) in f.xmm.iter_mut().zip(&self.core.xmm) {
            *v = x.to_le_bytes();
        }
        f.mxcsr = self.core.mxcsr;
        let e = &self.extra;
        (
            s.fs.base,
            s.gs.base,
            c.kernel_gs_base,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.cr8,
            s.efer,
        ) = (e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8]);
        c
    }

    /// Every register as (gdb's name, value), for telling what a write
    /// changed.
    pub fn named(&self) -> Vec<(String, u128)> {
        const GPR: [&str; 16] = [
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
            "r12", "r13", "r14", "r15",
        ];
        let c = &self.core;
        let mut v: Vec<(String, u128)> = GPR
            .iter()
            .zip(c.regs)
            .map(|(n, x)| ((*n).to_owned(), x.into()))
            .collect();
        v.push(("rip".into(), c.rip.into()));
        v.push(("eflags".into(), c.eflags.into()));
        let s = &c.segments;
        for (n, x) in [
            ("cs", s.cs),
            ("ss", s.ss),
            ("ds", s.ds),
            ("es", s.es),
            ("fs", s.fs),
            ("gs", s.gs),
        ] {
            v.push((n.into(), x.into()));
        }
        for (i, st) in c.st.iter().enumerate() {
            let mut b = [0u8; 16];
            b[..10].copy_from_slice(st);
            v.push((format!("st{i}"), u128::from_le_bytes(b)));
        }
        let f = &c.fpu;
        for (n, x) in [
            ("fctrl", f.fctrl),
            ("fstat", f.fstat),
            ("ftag", f.ftag),
            ("fioff", f.fioff),
            ("fooff", f.fooff),
            ("fop", f.fop),
        ] {
            v.push((n.into(), x.into()));
        }
        for (i, x) in c.xmm.iter().enumerate() {
            v.push((format!("xmm{i}"), *x));
        }
        v.push(("mxcsr".into(), c.mxcsr.into()));
        for (n, x) in EXTRA.iter().zip(self.extra) {
            v.push(((*n).into(), x.into()));
        }
        v
    }

    /// `name old -> new` for each register `new` changes.
    pub fn changes(&self, new: &Regs) -> Vec<String> {
        self.named()
            .into_iter()
            .zip(new.named())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((n, a), (_, b))| format!("{n} {a:#x} -> {b:#x}"))
            .collect()
    }
}

/// The target description (gdb's `features/i386/64bit-*.xml`, with the
/// system registers in a feature of kjump's own).
const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>i386:x86-64</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/>
      <field name="" start="1" end="1"/>
      <field name="PF" start="2" end="2"/>
      <field name="AF" start="4" end="4"/>
      <field name="ZF" start="6" end="6"/>
      <field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/>
      <field name="IF" start="9" end="9"/>
      <field name="DF" start="10" end="10"/>
      <field name="OF" start="11" end="11"/>
      <field name="NT" start="14" end="14"/>
      <field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/>
      <field name="AC" start="18" end="18"/>
      <field name="VIF" start="19" end="19"/>
      <field name="VIP" start="20" end="20"/>
      <field name="ID" start="21" end="21"/>
    </flags>
    <reg name="rax" bitsize="64" type="int64"/>
    <reg name="rbx" bitsize="64" type="int64"/>
    <reg name="rcx" bitsize="64" type="int64"/>
    <reg name="rdx" bitsize="64" type="int64"/>
    <reg name="rsi" bitsize="64" type="int64"/>
    <reg name="rdi" bitsize="64" type="int64"/>
    <reg name="rbp" bitsize="64" type="data_ptr"/>
    <reg name="rsp" bitsize="64" type="data_ptr"/>
    <reg name="r8" bitsize="64" type="int64"/>
    <reg name="r9" bitsize="64" type="int64"/>
    <reg name="r10" bitsize="64" type="int64"/>
    <reg name="r11" bitsize="64" type="int64"/>
    <reg name="r12" bitsize="64" type="int64"/>
    <reg name="r13" bitsize="64" type="int64"/>
    <reg name="r14" bitsize="64" type="int64"/>
    <reg name="r15" bitsize="64" type="int64"/>
    <reg name="rip" bitsize="64" type="code_ptr"/>
    <reg name="eflags" bitsize="32" type="i386_eflags"/>
    <reg name="cs" bitsize="32" type="int32"/>
    <reg name="ss" bitsize="32" type="int32"/>
    <reg name="ds" bitsize="32" type="int32"/>
    <reg name="es" bitsize="32" type="int32"/>
    <reg name="fs" bitsize="32" type="int32"/>
    <reg name="gs" bitsize="32" type="int32"/>
    <reg name="st0" bitsize="80" type="i387_ext"/>
    <reg name="st1" bitsize="80" type="i387_ext"/>
    <reg name="st2" bitsize="80" type="i387_ext"/>
    <reg name="st3" bitsize="80" type="i387_ext"/>
    <reg name="st4" bitsize="80" type="i387_ext"/>
    <reg name="st5" bitsize="80" type="i387_ext"/>
    <reg name="st6" bitsize="80" type="i387_ext"/>
    <reg name="st7" bitsize="80" type="i387_ext"/>
    <reg name="fctrl" bitsize="32" type="int" group="float"/>
    <reg name="fstat" bitsize="32" type="int" group="float"/>
    <reg name="ftag" bitsize="32" type="int" group="float"/>
    <reg name="fiseg" bitsize="32" type="int" group="float"/>
    <reg name="fioff" bitsize="32" type="int" group="float"/>
    <reg name="foseg" bitsize="32" type="int" group="float"/>
    <reg name="fooff" bitsize="32" type="int" group="float"/>
    <reg name="fop" bitsize="32" type="int" group="float"/>
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
    <flags id="i386_mxcsr" size="4">
      <field name="IE" start="0" end="0"/>
      <field name="DE" start="1" end="1"/>
      <field name="ZE" start="2" end="2"/>
      <field name="OE" start="3" end="3"/>
      <field name="UE" start="4" end="4"/>
      <field name="PE" start="5" end="5"/>
      <field name="DAZ" start="6" end="6"/>
      <field name="IM" start="7" end="7"/>
      <field name="DM" start="8" end="8"/>
      <field name="ZM" start="9" end="9"/>
      <field name="OM" start="10" end="10"/>
      <field name="UM" start="11" end="11"/>
      <field name="PM" start="12" end="12"/>
      <field name="FZ" start="15" end="15"/>
    </flags>
    <reg name="xmm0" bitsize="128" type="vec128" regnum="40"/>
    <reg name="xmm1" bitsize="128" type="vec128"/>
    <reg name="xmm2" bitsize="128" type="vec128"/>
    <reg name="xmm3" bitsize="128" type="vec128"/>
    <reg name="xmm4" bitsize="128" type="vec128"/>
    <reg name="xmm5" bitsize="128" type="vec128"/>
    <reg name="xmm6" bitsize="128" type="vec128"/>
    <reg name="xmm7" bitsize="128" type="vec128"/>
    <reg name="xmm8" bitsize="128" type="vec128"/>
    <reg name="xmm9" bitsize="128" type="vec128"/>
    <reg name="xmm10" bitsize="128" type="vec128"/>
    <reg name="xmm11" bitsize="128" type="vec128"/>
    <reg name="xmm12" bitsize="128" type="vec128"/>
    <reg name="xmm13" bitsize="128" type="vec128"/>
    <reg name="xmm14" bitsize="128" type="vec128"/>
    <reg name="xmm15" bitsize="128" type="vec128"/>
    <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
  </feature>
  <feature name="org.gnu.gdb.i386.segments">
    <reg name="fs_base" bitsize="64" type="int" regnum="57"/>
    <reg name="gs_base" bitsize="64" type="int"/>
  </feature>
  <feature name="org.kjump.x86_64.system">
    <reg name="k_gs_base" bitsize="64" type="int" regnum="59" group="system"/>
    <reg name="cr0" bitsize="64" type="int" group="system"/>
    <reg name="cr2" bitsize="64" type="int" group="system"/>
    <reg name="cr3" bitsize="64" type="int" group="system"/>
    <reg name="cr4" bitsize="64" type="int" group="system"/>
    <reg name="cr8" bitsize="64" type="int" group="system"/>
    <reg name="efer" bitsize="64" type="int" group="system"/>
  </feature>
</target>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CpuRegs {
        let mut c = CpuRegs::default();
        c.regs.rax = 1;
        c.regs.rbx = 0x1234;
        c.regs.r15 = 15;
        c.regs.rip = 0x20_1000;
        c.regs.rflags = 0x46;
        c.sregs.cs.selector = 8;
        c.sregs.fs.base = 0xf5;
        c.sregs.cr3 = 0x9000;
        c.sregs.efer = 0x500;
        c.fpu.fcw = 0x37f;
        c.fpu.ftwx = 0b1000_0001;
        c.fpu.xmm[3] = [7; 16];
        c.fpu.mxcsr = 0x1f80;
        c.kernel_gs_base = 0x6b;
        c
    }

    #[test]
    fn registers_go_to_gdb_in_its_order_and_back() {
        let c = sample();
        let r = Regs::from_cpu(&c);
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), CORE_BYTES + 72);
        let at = |n: usize| u64::from_le_bytes(bytes[n..n + 8].try_into().unwrap());
        assert_eq!(at(8), 0x1234, "rbx is gdb's register 1");
        assert_eq!(at(15 * 8), 15, "r15");
        assert_eq!(at(0x80), 0x20_1000, "rip");
        assert_eq!(at(CORE_BYTES), 0xf5, "fs_base");
        assert_eq!(at(CORE_BYTES + 16), 0x6b, "k_gs_base");
        assert_eq!(at(CORE_BYTES + 5 * 8), 0x9000, "cr3");
        assert_eq!(at(CORE_BYTES + 8 * 8), 0x500, "efer");

        let mut back = Regs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.apply(&c), c, "nothing changed, nothing differs");
        assert!(
            Regs::default()
                .gdb_deserialize(&bytes[..CORE_BYTES])
                .is_err(),
            "a short G is refused"
        );
    }

    #[test]
    fn a_write_changes_what_it_names() {
        let c = sample();
        let old = Regs::from_cpu(&c);
        let mut new = old.clone();
        new.core.regs[1] = 0x4321;
        new.extra[3] |= 1 << 16;
        new.core.segments.ds = 0x10;
        let d = new.apply(&c);
        assert_eq!(d.regs.rbx, 0x4321);
        assert_eq!(d.sregs.cr0, 1 << 16);
        assert_eq!(d.sregs.ds.selector, 0x10);
        assert_eq!(d.fpu, c.fpu);
        assert_eq!(
            old.changes(&new),
            [
                "rbx 0x1234 -> 0x4321",
                "ds 0x0 -> 0x10",
                "cr0 0x0 -> 0x10000"
            ]
        );
    }

    #[test]
    fn x87_tags_round_trip() {
        for t in [0u8, 1, 0x81, 0xff] {
            assert_eq!(abridged_tag(full_tag(t)), t);
        }
        assert_eq!(full_tag(0), 0xffff);
    }

    #[test]
    fn register_numbers_past_the_core_are_the_extras() {
        assert!(matches!(
            RegNum::from_raw_id(0),
            Some((RegNum::Core(X86_64CoreRegId::Gpr(0)), _))
        ));
        assert!(matches!(
            RegNum::from_raw_id(57),
            Some((RegNum::Extra(0), _))
        ));
        assert!(matches!(
            RegNum::from_raw_id(65),
            Some((RegNum::Extra(8), _))
        ));
        assert!(RegNum::from_raw_id(66).is_none());
        assert!(TARGET_XML.contains(r#"name="cr3""#));
    }
}
