//! The `boot` scenario: kernel A boots and checks its boot data.

use kjump_abi::abi::ANSWER_BACK;

use crate::scenario::{Outcome, RunError, RunState, handle_message};
use crate::vm::{Vm, VmEvent};

/// `boot`: kernel A boots and checks what the VMM gave it (e820, command
/// line, initramfs); a checkpoint is answered "you are back".
pub fn run(vm: &mut Vm, run: &mut RunState) -> Result<Outcome, RunError> {
    loop {
        match vm.run_until_event(&mut || ANSWER_BACK)? {
            VmEvent::Checkpoint { .. } => {
                run.checkpoints += 1;
                log::info!(
                    "[{}] checkpoint {}: answered BACK",
                    vm.console_name(),
                    run.checkpoints
                );
            }
            VmEvent::Breakpoint { .. } => {
                return Err(RunError::Protocol(
                    "a breakpoint fired that the VMM did not set",
                ));
            }
            VmEvent::Message(event) => {
                if let Some(verdict) = handle_message(vm, run, event)? {
                    return Ok(run.outcome(verdict, vm.console_name()));
                }
            }
        }
    }
}
