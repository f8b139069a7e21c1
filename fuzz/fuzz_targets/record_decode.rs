//! Fuzz target `record_decode`: arbitrary bytes as a value stored in the index.
//! The body is `blobcache::fuzzing::record_decode`, which `cargo test` also runs
//! on the checked-in corpus (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcache::fuzzing::record_decode(data);
});
