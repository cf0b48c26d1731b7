//! The assembly of kexec jump: the jump routine with its checkpoint, the
//! re-entry routine, and the relocation code copied into the control page.
//!
//! The flow mirrors Linux's `relocate_kernel_64.S` with preserved context:
//!
//! 1. `kjump_jump(cp)` (kernel text) saves every register of the kernel into
//!    the control page's context, puts back the few it used to do so, and
//!    runs the checkpoint instruction `kjump_checkpoint: in eax, dx`. The VMM
//!    answers JUMP; from here the kernel writes nothing but the control page.
//! 2. It switches to the control page's stack and enters the relocation code
//!    at `cp + 0` (`relocate_entry`), which loads the control page tables,
//!    swaps every source page with its destination page (in ring 3: see
//!    the relocation code below for why) and `call`s the peer: B's ELF
//!    entry the first time, later the peer's own re-entry point.
//! 3. The peer comes back by `call`ing our `relocate_peer_returned` (that is
//!    the `kexec_jump_back_entry` B is given): we pop the peer's return
//!    address (its re-entry point for the next jump), swap the pages back and
//!    jump to `kjump_reentry` (kernel text), which restores every register
//!    and runs the *same* checkpoint instruction. The VMM answers BACK and
//!    `kjump_jump` returns to its caller as if it had been a function call.

use core::arch::global_asm;

use kjump_abi::abi::{ANSWER_BACK, ANSWER_JUMP, CHECKPOINT_PORT};
use kjump_abi::arch::{
    COM1, CR0_CD, CR4_PGE, IOAPIC_BASE, IOAPIC_REG_ID, IOAPIC_REG_REDTBL, IOAPIC_REGSEL,
    IOAPIC_WINDOW, MSR_CSTAR, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_LSTAR,
    MSR_SFMASK, MSR_STAR, PIC_MASTER_IMR, PIC_SLAVE_IMR,
};
use kjump_abi::control::{self, Slot, slot_offset};
use kjump_abi::kimage::{IND_DESTINATION, IND_DONE, IND_INDIRECTION, IND_SOURCE};

/// CR4.SMEP and CR4.SMAP: would stop ring 0 from running on / touching the
/// control map's user pages.
const CR4_SMEP_SMAP: u64 = (1 << 20) | (1 << 21);
/// RFLAGS in ring 3: only the always-one bit (interrupts stay off, IOPL 0).
const TRIP_RFLAGS: u64 = 0x2;
/// RFLAGS the relocation code hands the re-entry path: AC and the
/// always-one bit.
const HANDOVER_RFLAGS: u64 = 0x2 | (1 << 18);
/// Busy bit of a TSS descriptor's type, in its access byte (byte 5).
const TSS_BUSY: u8 = 1 << 1;

unsafe extern "sysv64" {
    /// Saves the context into control page `cp`, checkpoints, and jumps to
    /// the peer; returns once this kernel has been resumed.
    pub fn kjump_jump(cp: u64);
    /// First byte of the relocation code (copied to `cp + control::CODE`).
    pub static relocate_start: u8;
    /// Where a peer enters this kernel's control page to come back.
    pub static relocate_peer_returned: u8;
    /// Runs `f(arg)` in ring 3 on the current stack, through the trip of
    /// the relocation code at control page `cp`, and restores the ring-0
    /// state; returns what `f` returned. Callers guarantee: `cp` is set up
    /// (code, user-accessible map, `RELOC_*` tables), interrupts are off,
    /// and `f` does nothing privileged (no I/O, no panic: a fault in ring 3
    /// other than #UD is a triple fault) and touches only memory that is
    /// the caller's to touch.
    pub fn kjump_ring3_call(cp: u64, f: extern "sysv64" fn(u64) -> u64, arg: u64) -> u64;
    /// The relocation code's ring-0 landing from ring 3 (its IDT's gate).
    pub static relocate_ring0_return: u8;
    /// End of the relocation code.
    pub static relocate_end: u8;
    /// The re-entry routine.
    pub static kjump_reentry: u8;
    /// The checkpoint instruction (`in eax, dx`) of `kjump_jump`.
    pub static kjump_checkpoint: u8;
}

global_asm!(
    // ---------------------------------------------------------------------
    // kjump_jump(rdi = control page). Interrupts are off (the caller did
    // cli). Saves all GPRs, rflags, CR0/3/4, EFER, FS/GS/KERNEL_GS bases,
    // STAR/LSTAR/CSTAR/SFMASK, GDTR, IDTR, TR, segment selectors and the
    // FXSAVE state; the UART slot was filled by the caller. Leaves every
    // GPR and rflags as they were when saved, with rdx = the checkpoint
    // port.
    // ---------------------------------------------------------------------
    ".section .text.kjump, \"ax\"",
    ".global kjump_jump",
    "kjump_jump:",
    "mov edx, {port}",
    "mov [rdi + {rax}], rax",
    "mov [rdi + {rbx}], rbx",
    "mov [rdi + {rcx}], rcx",
    "mov [rdi + {rdx}], rdx",
    "mov [rdi + {rsi}], rsi",
    "mov [rdi + {rdi}], rdi",
    "mov [rdi + {rbp}], rbp",
    "mov [rdi + {rsp}], rsp",
    "mov [rdi + {r8}], r8",
    "mov [rdi + {r9}], r9",
    "mov [rdi + {r10}], r10",
    "mov [rdi + {r11}], r11",
    "mov [rdi + {r12}], r12",
    "mov [rdi + {r13}], r13",
    "mov [rdi + {r14}], r14",
    "mov [rdi + {r15}], r15",
    "pushfq",
    "pop qword ptr [rdi + {rflags}]",
    "mov rax, cr0",
    "mov [rdi + {cr0}], rax",
    "mov rax, cr3",
    "mov [rdi + {cr3}], rax",
    "mov rax, cr4",
    "mov [rdi + {cr4}], rax",
    "mov ecx, {efer_msr}",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov [rdi + {efer}], rax",
    "mov ecx, {fs_msr}",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov [rdi + {fs_base}], rax",
    "mov ecx, {gs_msr}",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov [rdi + {gs_base}], rax",
    "mov ecx, {kgs_msr}",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov [rdi + {kgs_base}], rax",
    "mov ecx, {star_msr}",
    "rdmsr",
    "mov [rdi + {star}], eax",
    "mov [rdi + {star} + 4], edx",
    "mov ecx, {lstar_msr}",
    "rdmsr",
    "mov [rdi + {lstar}], eax",
    "mov [rdi + {lstar} + 4], edx",
    "mov ecx, {cstar_msr}",
    "rdmsr",
    "mov [rdi + {cstar}], eax",
    "mov [rdi + {cstar} + 4], edx",
    "mov ecx, {sfmask_msr}",
    "rdmsr",
    "mov [rdi + {sfmask}], eax",
    "mov [rdi + {sfmask} + 4], edx",
    "sgdt [rdi + {scratch}]",
    "movzx eax, word ptr [rdi + {scratch}]",
    "mov [rdi + {gdtr_limit}], rax",
    "mov rax, [rdi + {scratch} + 2]",
    "mov [rdi + {gdtr_base}], rax",
    "sidt [rdi + {scratch}]",
    "movzx eax, word ptr [rdi + {scratch}]",
    "mov [rdi + {idtr_limit}], rax",
    "mov rax, [rdi + {scratch} + 2]",
    "mov [rdi + {idtr_base}], rax",
    "xor eax, eax",
    "str ax",
    "mov [rdi + {tr}], rax",
    "mov ax, cs",
    "mov [rdi + {cs}], rax",
    "mov ax, ds",
    "mov [rdi + {ds}], rax",
    "mov ax, es",
    "mov [rdi + {es}], rax",
    "mov ax, fs",
    "mov [rdi + {fs}], rax",
    "mov ax, gs",
    "mov [rdi + {gs}], rax",
    "mov ax, ss",
    "mov [rdi + {ss}], rax",
    "fxsave64 [rdi + {fxsave}]",
    // Put back what the saving used: rax, rcx, rdx and the flags. The push
    // writes the saved flags to the stack slot pushfq wrote: same bytes.
    "mov rax, [rdi + {rax}]",
    "mov rcx, [rdi + {rcx}]",
    "mov rdx, [rdi + {rdx}]",
    "push qword ptr [rdi + {rflags}]",
    "popfq",
    // ---------------------------------------------------------------------
    // The checkpoint: reached with the same registers on the way out and on
    // the way back in. The VMM answers in eax.
    // ---------------------------------------------------------------------
    ".global kjump_checkpoint",
    "kjump_checkpoint:",
    "in eax, dx",
    "cmp eax, {back}",
    "je 2f",
    "cmp eax, {jump}",
    "jne 3f",
    // Leaving: from here on only the control page is written. Run the
    // relocation code on the control page's own stack.
    "lea rsp, [rdi + {stack_top}]",
    "jmp rdi",
    "2:",
    "ret",
    "3:",
    "ud2",
    // ---------------------------------------------------------------------
    // kjump_reentry(rdi = control page): entered from the relocation code
    // after the swap-back, on the control page stack and page tables, with
    // the peer's GDT still loaded. Restores the saved context (control
    // registers, descriptor tables, segments, MSRs, FPU, UART, the 8259
    // masks, the IOAPIC, the MTRRs, then the GPRs and flags) and runs the
    // checkpoint again.
    // ---------------------------------------------------------------------
    ".global kjump_reentry",
    "kjump_reentry:",
    // A deliberately buggy re-entry path, for fault injection only
    // (`kjump.fault=forget-REG`, see kexec.rs): "forgetting" to restore
    // a register is storing its current value over the saved one, so the
    // restore below leaves it as the peer and the relocation code left it.
    // With no fault bit set this block changes nothing.
    "bt qword ptr [rdi + {fault}], 0",
    "jnc 2f",
    "mov [rdi + {rax}], rax",
    "2:",
    "bt qword ptr [rdi + {fault}], 1",
    "jnc 2f",
    "mov [rdi + {rbx}], rbx",
    "2:",
    "bt qword ptr [rdi + {fault}], 2",
    "jnc 2f",
    "mov [rdi + {rcx}], rcx",
    "2:",
    "bt qword ptr [rdi + {fault}], 3",
    "jnc 2f",
    "mov [rdi + {rdx}], rdx",
    "2:",
    "bt qword ptr [rdi + {fault}], 4",
    "jnc 2f",
    "mov [rdi + {rsi}], rsi",
    "2:",
    "bt qword ptr [rdi + {fault}], 6",
    "jnc 2f",
    "mov [rdi + {rbp}], rbp",
    "2:",
    "bt qword ptr [rdi + {fault}], 7",
    "jnc 2f",
    "mov [rdi + {rsp}], rsp",
    "2:",
    "bt qword ptr [rdi + {fault}], 8",
    "jnc 2f",
    "mov [rdi + {r8}], r8",
    "2:",
    "bt qword ptr [rdi + {fault}], 9",
    "jnc 2f",
    "mov [rdi + {r9}], r9",
    "2:",
    "bt qword ptr [rdi + {fault}], 10",
    "jnc 2f",
    "mov [rdi + {r10}], r10",
    "2:",
    "bt qword ptr [rdi + {fault}], 11",
    "jnc 2f",
    "mov [rdi + {r11}], r11",
    "2:",
    "bt qword ptr [rdi + {fault}], 12",
    "jnc 2f",
    "mov [rdi + {r12}], r12",
    "2:",
    "bt qword ptr [rdi + {fault}], 13",
    "jnc 2f",
    "mov [rdi + {r13}], r13",
    "2:",
    "bt qword ptr [rdi + {fault}], 14",
    "jnc 2f",
    "mov [rdi + {r14}], r14",
    "2:",
    "bt qword ptr [rdi + {fault}], 15",
    "jnc 2f",
    "mov [rdi + {r15}], r15",
    "2:",
    "pushfq",
    "pop rax",
    "bt qword ptr [rdi + {fault}], {bit_rflags}",
    "jnc 2f",
    "mov [rdi + {rflags}], rax",
    "2:",
    "mov rax, cr3",
    "bt qword ptr [rdi + {fault}], {bit_cr3}",
    "jnc 2f",
    "mov [rdi + {cr3}], rax",
    "2:",
    "mov rax, cr0",
    "bt qword ptr [rdi + {fault}], {bit_cr0}",
    "jnc 2f",
    "mov [rdi + {cr0}], rax",
    "2:",
    "mov rax, cr4",
    "bt qword ptr [rdi + {fault}], {bit_cr4}",
    "jnc 2f",
    "mov [rdi + {cr4}], rax",
    "2:",
    "bt qword ptr [rdi + {fault}], {bit_efer}",
    "jnc 2f",
    "mov ecx, {efer_msr}",
    "rdmsr",
    "shl rdx, 32",
    "or rax, rdx",
    "mov [rdi + {efer}], rax",
    "2:",
    // `no-gdt-restore`: keep the GDT the relocation code loaded, and with
    // it the TR that lives in that GDT (the TSS of the control page).
    "bt qword ptr [rdi + {fault}], {bit_gdt}",
    "jnc 2f",
    "sgdt [rdi + {scratch}]",
    "movzx eax, word ptr [rdi + {scratch}]",
    "mov [rdi + {gdtr_limit}], rax",
    "mov rax, [rdi + {scratch} + 2]",
    "mov [rdi + {gdtr_base}], rax",
    "xor eax, eax",
    "str ax",
    "mov [rdi + {tr}], rax",
    "2:",
    // `no-idt-restore`: keep the relocation code's IDT.
    "bt qword ptr [rdi + {fault}], {bit_idt}",
    "jnc 2f",
    "sidt [rdi + {scratch}]",
    "movzx eax, word ptr [rdi + {scratch}]",
    "mov [rdi + {idtr_limit}], rax",
    "mov rax, [rdi + {scratch} + 2]",
    "mov [rdi + {idtr_base}], rax",
    "2:",
    "mov rax, [rdi + {cr4}]",
    "mov cr4, rax",
    "mov rax, [rdi + {cr3}]",
    "mov cr3, rax",
    "mov rax, [rdi + {cr0}]",
    "mov cr0, rax",
    "mov ecx, {efer_msr}",
    "mov rax, [rdi + {efer}]",
    "mov rdx, rax",
    "shr rdx, 32",
    "wrmsr",
    "mov rax, [rdi + {gdtr_limit}]",
    "mov [rdi + {scratch}], ax",
    "mov rax, [rdi + {gdtr_base}]",
    "mov [rdi + {scratch} + 2], rax",
    "lgdt [rdi + {scratch}]",
    "mov rax, [rdi + {idtr_limit}]",
    "mov [rdi + {scratch}], ax",
    "mov rax, [rdi + {idtr_base}]",
    "mov [rdi + {scratch} + 2], rax",
    "lidt [rdi + {scratch}]",
    // Reload CS with a far return, then the data segments.
    "push qword ptr [rdi + {cs}]",
    "lea rax, [rip + 4f]",
    "push rax",
    "retfq",
    "4:",
    "mov rax, [rdi + {ss}]",
    "mov ss, ax",
    "mov rax, [rdi + {ds}]",
    "mov ds, ax",
    "mov rax, [rdi + {es}]",
    "mov es, ax",
    "mov rax, [rdi + {fs}]",
    "mov fs, ax",
    "mov rax, [rdi + {gs}]",
    "mov gs, ax",
    // TR: ltr faults on a busy TSS descriptor; clear the busy bit first
    // (ltr sets it again, so the GDT ends as it was).
    "mov rax, [rdi + {tr}]",
    "test eax, eax",
    "jz 5f",
    "and eax, 0xfff8",
    "add rax, [rdi + {gdtr_base}]",
    "and byte ptr [rax + 5], ~{tss_busy}",
    "mov rax, [rdi + {tr}]",
    "ltr ax",
    "5:",
    // Bases after the selector loads (a selector load resets them).
    "mov ecx, {fs_msr}",
    "mov rax, [rdi + {fs_base}]",
    "mov rdx, rax",
    "shr rdx, 32",
    "wrmsr",
    "mov ecx, {gs_msr}",
    "mov rax, [rdi + {gs_base}]",
    "mov rdx, rax",
    "shr rdx, 32",
    "wrmsr",
    "mov ecx, {kgs_msr}",
    "mov rax, [rdi + {kgs_base}]",
    "mov rdx, rax",
    "shr rdx, 32",
    "wrmsr",
    // The SYSCALL MSRs: the peer may have programmed its own.
    "mov ecx, {star_msr}",
    "mov eax, [rdi + {star}]",
    "mov edx, [rdi + {star} + 4]",
    "wrmsr",
    "mov ecx, {lstar_msr}",
    "mov eax, [rdi + {lstar}]",
    "mov edx, [rdi + {lstar} + 4]",
    "wrmsr",
    "mov ecx, {cstar_msr}",
    "mov eax, [rdi + {cstar}]",
    "mov edx, [rdi + {cstar} + 4]",
    "wrmsr",
    "mov ecx, {sfmask_msr}",
    "mov eax, [rdi + {sfmask}]",
    "mov edx, [rdi + {sfmask} + 4]",
    "wrmsr",
    "bt qword ptr [rdi + {fault}], {bit_no_fpu}",
    "jc 2f",
    "fxrstor64 [rdi + {fxsave}]",
    "2:",
    // UART: IER, LCR, MCR, SCR, DLL, DLM in bytes 0..6 of the slot. The
    // divisor goes through DLAB, then LCR as saved.
    "bt qword ptr [rdi + {fault}], {bit_no_uart}",
    "jc 2f",
    "mov dx, {com1} + 3",
    "mov al, 0x80",
    "out dx, al",
    "mov dx, {com1}",
    "mov al, [rdi + {uart} + 4]",
    "out dx, al",
    "mov dx, {com1} + 1",
    "mov al, [rdi + {uart} + 5]",
    "out dx, al",
    "mov dx, {com1} + 3",
    "mov al, [rdi + {uart} + 1]",
    "out dx, al",
    "mov dx, {com1} + 1",
    "mov al, [rdi + {uart}]",
    "out dx, al",
    "mov dx, {com1} + 4",
    "mov al, [rdi + {uart} + 2]",
    "out dx, al",
    "mov dx, {com1} + 7",
    "mov al, [rdi + {uart} + 3]",
    "out dx, al",
    "2:",
    // The interrupt controllers and the MTRRs, from what the kernel saved
    // before it jumped (kexec/syscore.rs; control.rs `SAVED_*`), as Linux's
    // syscore_resume() puts them back after a preserve-context kexec. The
    // kernel's own page tables are loaded again (CR3 above): they map the
    // IOAPIC uncached.
    // 8259 pair: the masks (OCW1), as `i8259A_resume` ends.
    "bt qword ptr [rdi + {fault}], {bit_no_pic}",
    "jc 2f",
    "mov al, [rdi + {saved_pic}]",
    "out {pic_master_imr}, al",
    "mov al, [rdi + {saved_pic} + 1]",
    "out {pic_slave_imr}, al",
    "2:",
    // IOAPIC, as `ioapic_resume`: the ID, every redirection entry (high
    // dword first, as `__ioapic_write_entry`), then IOREGSEL as the kernel
    // left it. rsi = the registers, rdx = pin, rcx = pins saved.
    "bt qword ptr [rdi + {fault}], {bit_no_ioapic}",
    "jc 2f",
    "mov rcx, [rdi + {saved_ioapic_pins}]",
    "test rcx, rcx",
    "jz 2f",
    "mov esi, {ioapic_base}",
    "mov dword ptr [rsi + {ioapic_regsel}], {ioapic_reg_id}",
    "mov eax, [rdi + {saved_ioapic_sel_id} + 4]",
    "mov dword ptr [rsi + {ioapic_window}], eax",
    "xor edx, edx",
    "6:",
    "lea eax, [rdx * 2 + {ioapic_reg_redtbl} + 1]",
    "mov dword ptr [rsi + {ioapic_regsel}], eax",
    "mov eax, [rdi + rdx * 8 + {saved_ioapic_redir} + 4]",
    "mov dword ptr [rsi + {ioapic_window}], eax",
    "lea eax, [rdx * 2 + {ioapic_reg_redtbl}]",
    "mov dword ptr [rsi + {ioapic_regsel}], eax",
    "mov eax, [rdi + rdx * 8 + {saved_ioapic_redir}]",
    "mov dword ptr [rsi + {ioapic_window}], eax",
    "inc edx",
    "cmp rdx, rcx",
    "jb 6b",
    "mov eax, [rdi + {saved_ioapic_sel_id}]",
    "mov dword ptr [rsi + {ioapic_regsel}], eax",
    "2:",
    // Device resume after a restore from a hibernation image: the virtio
    // device whose window the kernel named is reset (status 0), as Linux's
    // `virtio_device_restore` begins; the device is the restore kernel's
    // until then. rsi = the window.
    "bt qword ptr [rdi + {fault}], {bit_no_device_resume}",
    "jc 2f",
    "mov rsi, [rdi + {device_resume}]",
    "test rsi, rsi",
    "jz 2f",
    "mov dword ptr [rsi + {virtio_status}], 0",
    "2:",
    // MTRRs, as Linux changes them (arch/x86/kernel/cpu/cacheinfo.c
    // `cache_disable`/`cache_enable` around mtrr/generic.c
    // `set_mtrr_state`; SDM vol. 3A, 12.11.7.2): caches off (CR0.CD) and
    // flushed, global pages off and the TLB flushed, MTRRs disabled; every
    // saved MTRR written, MTRR_DEF_TYPE (pair 0) last, enabling them; TLB
    // flushed, CR0 and CR4 as they were. r8 = end offset of the pairs, r9
    // = CR0, r10 = CR4, r11 = offset of the pair.
    "bt qword ptr [rdi + {fault}], {bit_no_mtrr}",
    "jc 2f",
    "mov r8, [rdi + {saved_mtrr_count}]",
    "test r8, r8",
    "jz 2f",
    "mov r9, cr0",
    "mov rax, r9",
    "or rax, {cr0_cd}",
    "mov cr0, rax",
    "wbinvd",
    "mov r10, cr4",
    "mov rax, r10",
    "and rax, ~{cr4_pge}",
    "mov cr4, rax",
    "mov rax, cr3",
    "mov cr3, rax",
    "mov ecx, [rdi + {saved_mtrrs}]",
    "xor eax, eax",
    "xor edx, edx",
    "wrmsr",
    "wbinvd",
    "shl r8, 4",
    "mov r11d, 16",
    "6:",
    "cmp r11, r8",
    "jae 7f",
    "mov ecx, [rdi + r11 + {saved_mtrrs}]",
    "mov eax, [rdi + r11 + {saved_mtrrs} + 8]",
    "mov edx, [rdi + r11 + {saved_mtrrs} + 12]",
    "wrmsr",
    "add r11, 16",
    "jmp 6b",
    "7:",
    "mov rax, cr3",
    "mov cr3, rax",
    "mov ecx, [rdi + {saved_mtrrs}]",
    "mov eax, [rdi + {saved_mtrrs} + 8]",
    "mov edx, [rdi + {saved_mtrrs} + 12]",
    "wrmsr",
    "mov cr0, r9",
    "mov cr4, r10",
    "2:",
    // Back onto the kernel's stack, flags (the push rewrites the very slot
    // kjump_jump's pushfq wrote), then every GPR, rdi last.
    "mov rsp, [rdi + {rsp}]",
    "push qword ptr [rdi + {rflags}]",
    "popfq",
    "mov rax, [rdi + {rax}]",
    "mov rbx, [rdi + {rbx}]",
    "mov rcx, [rdi + {rcx}]",
    "mov rdx, [rdi + {rdx}]",
    "mov rsi, [rdi + {rsi}]",
    "mov rbp, [rdi + {rbp}]",
    "mov r8, [rdi + {r8}]",
    "mov r9, [rdi + {r9}]",
    "mov r10, [rdi + {r10}]",
    "mov r11, [rdi + {r11}]",
    "mov r12, [rdi + {r12}]",
    "mov r13, [rdi + {r13}]",
    "mov r14, [rdi + {r14}]",
    "mov r15, [rdi + {r15}]",
    "mov rdi, [rdi + {rdi}]",
    "jmp kjump_checkpoint",
    // ---------------------------------------------------------------------
    // kjump_ring3_call(rdi = cp, rsi = f, rdx = arg) -> rax = f(arg), with
    // f run in ring 3 through the relocation code's trip (cp's control
    // map, tables and `relocate_enter_ring3`), on this stack. Interrupts
    // off. Puts back everything the trip changes: CR3, CR4, GDTR, IDTR,
    // TR, CS, SS, DS/ES/FS/GS, the FS/GS bases and rflags. Callee-saved
    // registers are preserved (f follows the SysV ABI).
    // ---------------------------------------------------------------------
    ".global kjump_ring3_call",
    "kjump_ring3_call:",
    "push rbp",
    "mov rbp, rsp",
    "pushfq",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    // Saved state: [rsp] GDTR, [rsp + 16] IDTR, [rsp + 32] FS base, [rsp +
    // 40] GS base, [rsp + 48..88] DS, ES, FS, GS, SS, [rsp + 88] CR4. 104
    // bytes leave rsp 8 mod 16, so that ring 3's `call` finds it aligned
    // once `call rax` below has pushed its return address.
    "sub rsp, 104",
    "mov rbx, rdi",
    "mov rdi, rdx",
    "mov r12, cr3",
    "mov rax, cr4",
    "mov [rsp + 88], rax",
    "sgdt [rsp]",
    "sidt [rsp + 16]",
    "xor r13d, r13d",
    "str r13w",
    "mov r15d, cs",
    "mov word ptr [rsp + 48], ds",
    "mov word ptr [rsp + 56], es",
    "mov word ptr [rsp + 64], fs",
    "mov word ptr [rsp + 72], gs",
    "mov word ptr [rsp + 80], ss",
    "mov ecx, {fs_msr}",
    "rdmsr",
    "mov [rsp + 32], eax",
    "mov [rsp + 36], edx",
    "mov ecx, {gs_msr}",
    "rdmsr",
    "mov [rsp + 40], eax",
    "mov [rsp + 44], edx",
    // The copy of relocate_enter_ring3 in cp.
    "lea rax, [rip + relocate_enter_ring3]",
    "lea rcx, [rip + relocate_start]",
    "sub rax, rcx",
    "add rax, rbx",
    "lea rcx, [rip + 7f]",
    "call rax",
    // Back in ring 0 on cp's tables and map; rax = f's result.
    "mov r14, rax",
    "mov cr3, r12",
    "mov rax, [rsp + 88]",
    "mov rcx, cr4",
    "cmp rax, rcx",
    "je 2f",
    "mov cr4, rax",
    "2:",
    "lgdt [rsp]",
    "push r15",
    "lea rax, [rip + 3f]",
    "push rax",
    "retfq",
    "3:",
    "mov ss, word ptr [rsp + 80]",
    "mov ds, word ptr [rsp + 48]",
    "mov es, word ptr [rsp + 56]",
    "mov fs, word ptr [rsp + 64]",
    "mov gs, word ptr [rsp + 72]",
    "mov ecx, {fs_msr}",
    "mov eax, [rsp + 32]",
    "mov edx, [rsp + 36]",
    "wrmsr",
    "mov ecx, {gs_msr}",
    "mov eax, [rsp + 40]",
    "mov edx, [rsp + 44]",
    "wrmsr",
    "lidt [rsp + 16]",
    // TR as in kjump_reentry: clear the busy bit, ltr sets it again.
    "test r13d, r13d",
    "jz 4f",
    "mov eax, r13d",
    "and eax, 0xfff8",
    "add rax, [rsp + 2]",
    "and byte ptr [rax + 5], ~{tss_busy}",
    "ltr r13w",
    "4:",
    "mov rax, r14",
    "add rsp, 104",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "popfq",
    "pop rbp",
    "ret",
    // Ring 3: f(rdi), then back.
    "7:",
    "call rsi",
    "ud2",
    // ---------------------------------------------------------------------
    // The relocation code. Position independent: it runs from its copy at
    // cp + 0, identity-mapped, interrupts off, and finds its control page
    // from its own rip.
    //
    // Why the copying runs in ring 3: on the software KVM backend of the
    // test machines (kvm-pvm, DESIGN.md "Facts") every ring-0 instruction
    // is emulated (~2 µs each, `rep movsq` ~1 µs per 8 bytes) while ring 3
    // runs natively. Swapping the 8 MiB peer region in ring 0 took seconds
    // per jump; in ring 3 it takes milliseconds. The ring-0 part stays a
    // few dozen instructions.
    //
    // How: the control map (paging.rs, `build_user_identity_map`) is
    // user-accessible at every level, so ring 3 reaches all RAM, the control
    // page and its stack. The control page carries its own GDT, IDT and TSS
    // (control.rs, `RELOC_*`; the loaded ones may be the peer's, in pages
    // the walk swaps out). `iretq` enters ring 3; `ud2` comes back: its #UD
    // goes through the IDT's one gate to ring 0, on the TSS's RSP0. (On
    // kvm-pvm `syscall` from ring 3 lands at LSTAR still in ring 3, and
    // `int n` from ring 3 arrives as #UD.) Plain architecture, so the same
    // code runs under VMX. No MSR is touched.
    // CR4.SMEP/SMAP would make ring 0 fault on the user pages; the kernels
    // never set them (the VMM boots with PAE|OSFXSR|OSXMMEXCPT), and the
    // transfer clears them should they be set.
    //
    // What the trip leaves behind, all restored by whoever runs next (a
    // kernel's `kjump_reentry`, or a peer's boot, loads everything afresh):
    // GDTR/IDTR/TR on the control page's tables, CS 0x08, SS null (an
    // interrupt to ring 0 loads a null SS), DS/ES/FS/GS null (iretq to ring
    // 3 nulls data segments of DPL 0), CR3 the control map.
    // ---------------------------------------------------------------------
    ".balign 16",
    ".global relocate_start",
    "relocate_start:",
    // relocate_entry(rdi = cp), rsp = cp's stack, the jumping kernel's CR3.
    "mov rbx, rdi",
    // The saved context then holds the kernel as its checkpoint left it:
    // rax, the one register the checkpoint changes, is the VMM's answer
    // (the crash scenario's crash notes are this context; the re-entry
    // path's own checkpoint overwrites rax anyway).
    "mov [rbx + {rax}], rax",
    // Fault injection only (`kjump.fault=stale-crash-notes`, the crash
    // scenario): store our own rsp over the saved one, so the saved
    // context (the crash notes the capture kernel reads) no longer holds
    // the kernel's rsp at the checkpoint.
    "bt qword ptr [rbx + {fault}], {bit_stale_notes}",
    "jnc 2f",
    "mov [rbx + {rsp}], rsp",
    "2:",
    "xor esi, esi", // direction: 0 = outbound
    "call 10f",
    "mov qword ptr [rbx + {peer_booted}], 1",
    "mov rsi, [rbx + {peer_arg}]",
    "mov rax, [rbx + {peer_entry}]",
    "call rax",
    // The peer called us back: its return address, on its stack, is where
    // it wants to be entered next time.
    ".global relocate_peer_returned",
    "relocate_peer_returned:",
    "pop rcx",
    "lea rbx, [rip + relocate_start]",
    // Fault injection only (`kjump.fault=wrong-reentry-slot`): read the
    // re-entry point one slot too high, past the top of the peer's stack.
    "bt qword ptr [rbx + {fault}], {bit_wrong_slot}",
    "jnc 2f",
    "mov rcx, [rsp]",
    "2:",
    // Fault injection only (`kjump.fault=lose-preserve`): record the
    // peer's boot entry instead, as if the jump did not preserve the
    // peer's context.
    "bt qword ptr [rbx + {fault}], {bit_lose_preserve}",
    "jnc 2f",
    "mov rcx, [rbx + {peer_boot_entry}]",
    "2:",
    "mov [rbx + {peer_entry}], rcx",
    "lea rsp, [rbx + {stack_top}]",
    "mov esi, 1", // direction: 1 = inbound
    "call 10f",
    // Hand over with marked flags: AC, which no kernel has at its jump
    // (and which does nothing here: CR0.AM is clear). A re-entry path
    // that does not restore the kernel's own rflags leaves it set, so the
    // oracle sees that whatever the arithmetic flags happen to be.
    "push {handover_rflags}",
    "popfq",
    // And with every GPR but rdi (the control page) and rsp poisoned with
    // its own value, `POISON + slot`: a register the re-entry path does
    // not restore is seen, and named by its value, even where the peer
    // happened to leave what the kernel had.
    "mov rdi, rbx",
    "mov rax, {poison}",
    "lea rbx, [rax + {rbx_slot}]",
    "lea rcx, [rax + {rcx_slot}]",
    "lea rdx, [rax + {rdx_slot}]",
    "lea rsi, [rax + {rsi_slot}]",
    "lea rbp, [rax + {rbp_slot}]",
    "lea r8, [rax + {r8_slot}]",
    "lea r9, [rax + {r9_slot}]",
    "lea r10, [rax + {r10_slot}]",
    "lea r11, [rax + {r11_slot}]",
    "lea r12, [rax + {r12_slot}]",
    "lea r13, [rax + {r13_slot}]",
    "lea r14, [rax + {r14_slot}]",
    "lea r15, [rax + {r15_slot}]",
    "jmp qword ptr [rdi + {reentry}]",
    // transfer(rbx = cp, esi = direction), ring 0, any CR3 that maps the
    // control pages, rsp on the control page's stack. Returns in ring 0
    // with the state described above; clobbers all GPRs but rbx, rsp, rbp,
    // r14 and r15.
    "10:",
    "lea rcx, [rip + 40f]",
    // enter_ring3(rbx = cp, rcx = ring-3 rip), ring 0, any CR3 that maps
    // the control pages; [rsp] is where the way back returns to (the
    // caller's return address). Clobbers rax; ring 3 starts with every
    // other GPR as it was here and the same rsp, and `ud2` brings it back
    // (relocate_ring0_return) with rsp as it found it. Also used by the
    // kernel (`kjump_ring3_call`).
    ".global relocate_enter_ring3",
    "relocate_enter_ring3:",
    "mov rax, cr4",
    "test eax, {cr4_smep_smap}",
    "jz 11f",
    "and rax, ~{cr4_smep_smap}",
    "mov cr4, rax",
    "11:",
    "mov rax, [rbx + {page_table}]",
    "mov cr3, rax",
    "lgdt [rbx + {gdt_ptr}]",
    "lidt [rbx + {idt_ptr}]",
    // ltr marks the TSS busy, and faults on a busy one: this control page's
    // GDT was used by earlier trips.
    "and byte ptr [rbx + {gdt} + {tss_sel} + 5], ~{tss_busy}",
    "mov eax, {tss_sel}",
    "ltr ax",
    "mov rax, rsp",
    "push {user_ds}",
    "push rax",
    "push {trip_rflags}",
    "push {user_cs}",
    "push rcx",
    "iretq",
    // Ring 3 (rbx = cp, esi = direction): walks the indirection list. Swap
    // mode exchanges each source page with its destination through the
    // swap page (both directions alike). Backup mode copies: outbound, each
    // destination is saved to its page of list 1 and loaded from its page
    // of list 2; inbound, saved to list 2 and loaded from list 1. Ends with
    // `ud2` (to relocate_ring0_return) with rsp as it found it.
    "40:",
    "cld",
    "mov qword ptr [rbx + {pairs}], 0",
    "mov r12d, esi",
    "cmp qword ptr [rbx + {mode}], {mode_backup}",
    "je 20f",
    "mov r8, [rbx + {head}]",
    "xor r13d, r13d", // op 0: swap
    "call 30f",
    "jmp 49f",
    "20:",
    // Backup: first save (op 1) with the list that receives our content,
    // then load (op 2) from the other one.
    "mov r8, [rbx + {head}]",
    "test r12d, r12d",
    "jz 21f",
    "mov r8, [rbx + {head2}]",
    "21:",
    "mov r13d, 1",
    "call 30f",
    "mov r8, [rbx + {head2}]",
    "test r12d, r12d",
    "jz 22f",
    "mov r8, [rbx + {head}]",
    "22:",
    "mov r13d, 2",
    "call 30f",
    "49:",
    "ud2",
    // walk(r8 = head, r13 = op), ring 3: r9 = destination, r10 = next
    // entry, r11 = swap page.
    "30:",
    "xor r9d, r9d",
    "xor r10d, r10d",
    "mov r11, [rbx + {swap_page}]",
    "31:",
    "mov rax, r8",
    "and rax, -4096",
    "test r8, {ind_done}",
    "jnz 39f",
    "test r8, {ind_indirection}",
    "jz 32f",
    "mov r10, rax",
    "jmp 38f",
    "32:",
    "test r8, {ind_destination}",
    "jz 33f",
    "mov r9, rax",
    "jmp 38f",
    "33:",
    "test r8, {ind_source}",
    "jz 38f",
    // Fault injection only (`kjump.fault=skip-swap-back`): on the way
    // back, leave the first page of the list where it is.
    "test r12d, r12d",
    "jz 37f",
    "bt qword ptr [rbx + {fault}], {bit_skip_swap_back}",
    "jnc 37f",
    "cmp qword ptr [rbx + {pairs}], 0",
    "je 36f",
    "37:",
    "cmp r13d, 1",
    "je 34f",
    "ja 35f",
    // swap: src -> swap page, dest -> src, swap page -> dest
    "mov rsi, rax",
    "mov rdi, r11",
    "mov ecx, 512",
    "rep movsq",
    "mov rsi, r9",
    "mov rdi, rax",
    "mov ecx, 512",
    "rep movsq",
    "mov rsi, r11",
    "mov rdi, r9",
    "mov ecx, 512",
    "rep movsq",
    "jmp 36f",
    "34:", // save: dest -> src
    "mov rsi, r9",
    "mov rdi, rax",
    "mov ecx, 512",
    "rep movsq",
    "jmp 36f",
    "35:", // load: src -> dest
    "mov rsi, rax",
    "mov rdi, r9",
    "mov ecx, 512",
    "rep movsq",
    "36:",
    "inc qword ptr [rbx + {pairs}]",
    "add r9, 4096",
    "38:",
    "mov r8, [r10]",
    "add r10, 8",
    "jmp 31b",
    "39:",
    "ret",
    // Back in ring 0 through the #UD gate (cp's IDT; exported for its
    // setup): on RSP0 with the CPU's frame (rip, cs, rflags, rsp, ss; #UD
    // pushes no error code). Drop it: back to ring 3's rsp, which is
    // transfer's own, and return.
    ".global relocate_ring0_return",
    "relocate_ring0_return:",
    "mov rsp, [rsp + 24]",
    "ret",
    ".global relocate_end",
    "relocate_end:",
    ".previous",
    port = const CHECKPOINT_PORT,
    fault = const control::DATA_FAULT,
    bit_rflags = const Slot::Rflags as u64,
    bit_cr3 = const Slot::Cr3 as u64,
    bit_cr0 = const Slot::Cr0 as u64,
    bit_cr4 = const Slot::Cr4 as u64,
    bit_efer = const Slot::Efer as u64,
    bit_gdt = const Slot::GdtrBase as u64,
    bit_idt = const Slot::IdtrBase as u64,
    bit_wrong_slot = const control::FAULT_WRONG_REENTRY_SLOT,
    bit_lose_preserve = const control::FAULT_LOSE_PRESERVE,
    bit_no_fpu = const control::FAULT_NO_FPU_RESTORE,
    bit_no_uart = const control::FAULT_NO_UART_RESTORE,
    bit_no_pic = const control::FAULT_NO_PIC_RESTORE,
    bit_no_ioapic = const control::FAULT_NO_IOAPIC_RESTORE,
    bit_no_mtrr = const control::FAULT_NO_MTRR_RESTORE,
    bit_no_device_resume = const control::FAULT_NO_DEVICE_RESUME,
    device_resume = const control::DATA_DEVICE_RESUME,
    virtio_status = const kjump_abi::virtio::reg::STATUS,
    saved_pic = const control::SAVED_PIC,
    saved_ioapic_sel_id = const control::SAVED_IOAPIC_SEL_ID,
    saved_ioapic_pins = const control::SAVED_IOAPIC_PINS,
    saved_ioapic_redir = const control::SAVED_IOAPIC_REDIR,
    saved_mtrr_count = const control::SAVED_MTRR_COUNT,
    saved_mtrrs = const control::SAVED_MTRRS,
    pic_master_imr = const PIC_MASTER_IMR,
    pic_slave_imr = const PIC_SLAVE_IMR,
    ioapic_base = const IOAPIC_BASE,
    ioapic_regsel = const IOAPIC_REGSEL,
    ioapic_window = const IOAPIC_WINDOW,
    ioapic_reg_id = const IOAPIC_REG_ID,
    ioapic_reg_redtbl = const IOAPIC_REG_REDTBL,
    cr0_cd = const CR0_CD,
    cr4_pge = const CR4_PGE,
    bit_skip_swap_back = const control::FAULT_SKIP_SWAP_BACK,
    bit_stale_notes = const control::FAULT_STALE_CRASH_NOTES,
    back = const ANSWER_BACK,
    jump = const ANSWER_JUMP,
    rax = const slot_offset(Slot::Rax),
    rbx = const slot_offset(Slot::Rbx),
    rcx = const slot_offset(Slot::Rcx),
    rdx = const slot_offset(Slot::Rdx),
    rsi = const slot_offset(Slot::Rsi),
    rdi = const slot_offset(Slot::Rdi),
    rbp = const slot_offset(Slot::Rbp),
    rsp = const slot_offset(Slot::Rsp),
    r8 = const slot_offset(Slot::R8),
    r9 = const slot_offset(Slot::R9),
    r10 = const slot_offset(Slot::R10),
    r11 = const slot_offset(Slot::R11),
    r12 = const slot_offset(Slot::R12),
    r13 = const slot_offset(Slot::R13),
    r14 = const slot_offset(Slot::R14),
    r15 = const slot_offset(Slot::R15),
    rflags = const slot_offset(Slot::Rflags),
    cr0 = const slot_offset(Slot::Cr0),
    cr3 = const slot_offset(Slot::Cr3),
    cr4 = const slot_offset(Slot::Cr4),
    efer = const slot_offset(Slot::Efer),
    fs_base = const slot_offset(Slot::FsBase),
    gs_base = const slot_offset(Slot::GsBase),
    kgs_base = const slot_offset(Slot::KernelGsBase),
    gdtr_limit = const slot_offset(Slot::GdtrLimit),
    gdtr_base = const slot_offset(Slot::GdtrBase),
    idtr_limit = const slot_offset(Slot::IdtrLimit),
    idtr_base = const slot_offset(Slot::IdtrBase),
    tr = const slot_offset(Slot::Tr),
    cs = const slot_offset(Slot::Cs),
    ds = const slot_offset(Slot::Ds),
    es = const slot_offset(Slot::Es),
    fs = const slot_offset(Slot::Fs),
    gs = const slot_offset(Slot::Gs),
    ss = const slot_offset(Slot::Ss),
    star = const slot_offset(Slot::Star),
    lstar = const slot_offset(Slot::Lstar),
    cstar = const slot_offset(Slot::Cstar),
    sfmask = const slot_offset(Slot::Sfmask),
    uart = const slot_offset(Slot::Uart),
    fxsave = const control::FXSAVE,
    scratch = const control::DATA_SCRATCH,
    stack_top = const control::STACK_TOP,
    page_table = const control::DATA_PAGE_TABLE,
    peer_entry = const control::DATA_PEER_ENTRY,
    peer_boot_entry = const control::DATA_PEER_BOOT_ENTRY,
    peer_arg = const control::DATA_PEER_ARG,
    peer_booted = const control::DATA_PEER_BOOTED,
    reentry = const control::DATA_REENTRY,
    head = const control::DATA_HEAD,
    head2 = const control::DATA_HEAD2,
    swap_page = const control::DATA_SWAP_PAGE,
    mode = const control::DATA_MODE,
    mode_backup = const control::MODE_BACKUP,
    pairs = const control::DATA_PAIRS,
    gdt_ptr = const control::RELOC_GDT_PTR,
    idt_ptr = const control::RELOC_IDT_PTR,
    gdt = const control::RELOC_GDT,
    tss_sel = const control::RELOC_TSS_SEL,
    tss_busy = const TSS_BUSY,
    user_ds = const control::RELOC_USER_DS,
    user_cs = const control::RELOC_USER_CS,
    trip_rflags = const TRIP_RFLAGS,
    handover_rflags = const HANDOVER_RFLAGS,
    poison = const control::HANDOVER_POISON,
    rbx_slot = const Slot::Rbx as u64,
    rcx_slot = const Slot::Rcx as u64,
    rdx_slot = const Slot::Rdx as u64,
    rsi_slot = const Slot::Rsi as u64,
    rbp_slot = const Slot::Rbp as u64,
    r8_slot = const Slot::R8 as u64,
    r9_slot = const Slot::R9 as u64,
    r10_slot = const Slot::R10 as u64,
    r11_slot = const Slot::R11 as u64,
    r12_slot = const Slot::R12 as u64,
    r13_slot = const Slot::R13 as u64,
    r14_slot = const Slot::R14 as u64,
    r15_slot = const Slot::R15 as u64,
    cr4_smep_smap = const CR4_SMEP_SMAP,
    star_msr = const MSR_STAR,
    lstar_msr = const MSR_LSTAR,
    cstar_msr = const MSR_CSTAR,
    sfmask_msr = const MSR_SFMASK,
    efer_msr = const MSR_EFER,
    fs_msr = const MSR_FS_BASE,
    gs_msr = const MSR_GS_BASE,
    kgs_msr = const MSR_KERNEL_GS_BASE,
    com1 = const COM1,
    ind_done = const IND_DONE,
    ind_indirection = const IND_INDIRECTION,
    ind_destination = const IND_DESTINATION,
    ind_source = const IND_SOURCE,
);
