//! The `modelc` binary.

use std::io::IsTerminal;

fn main() {
    // Steps run on this thread and the pool's others, without a hand-off.
    modelc_compiler::backend::cpu::run_kernels_on_this_thread();
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let code = modelc::cli::run(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr(), color);
    std::process::exit(code);
}
