//! A `pytorch_model.bin` of arbitrary bytes: listing its tensors may fail, never panic, hang,
//! run pickle code, or report a tensor outside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatvec_pickle::fuzzing::torch_zip(data));
