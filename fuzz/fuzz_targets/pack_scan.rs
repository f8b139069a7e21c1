//! Fuzz target `pack_scan`: arbitrary bytes as a pack file, or a pack built
//! from the bytes and then damaged; scanned, read and recovered.
//! The body is `blobcache::fuzzing::pack_scan`, which `cargo test` also runs
//! on the checked-in corpus (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcache::fuzzing::pack_scan(data);
});
