//! A chat template of arbitrary text: compiling and rendering it may fail, never panic, hang or
//! grow without bound (fuel and the rendered-size cap).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatvec_gen::template::fuzz_render(data));
