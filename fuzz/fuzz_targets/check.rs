//! Fuzzes the whole front end: parse, resolve and shape-check arbitrary text.
//! Any panic is a bug; diagnostics must point inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelc_compiler::Loader;

/// Imports resolve to one fixed valid spec, so finetunes get exercised too.
struct Fixed;

impl Loader for Fixed {
    fn load(&self, _: &Path) -> Result<String, String> {
        Ok(include_str!("../../specs/lenet5.model").to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let len = text.len();
    let (sources, _, errors) = modelc_compiler::check_text("fuzz.model", text.to_string(), &Fixed);
    for e in &errors {
        use miette::Diagnostic;
        let file_len = sources.file(e.file).text.len();
        for l in e.error.labels().into_iter().flatten() {
            assert!(l.offset() + l.len() <= file_len.max(len));
        }
    }
});
