//! Arbitrary bytes as a GGUF file: the header, metadata and tensor index are refused or checked,
//! never a panic, hang or allocation beyond the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatvec_gguf::read::fuzz_index(data));
