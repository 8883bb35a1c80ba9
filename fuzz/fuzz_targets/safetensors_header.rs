//! A model directory whose weight file (or index and shard) is arbitrary bytes: opening it may
//! fail, never panic, hang or read outside the directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chatvec_format::fuzzing::checkpoint_dir(data));
