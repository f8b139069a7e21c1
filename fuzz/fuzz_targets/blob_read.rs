//! Fuzz target `blob_read`: arbitrary bytes as the blob file of a payload.
//! The body is `blobcache::fuzzing::blob_read`, which `cargo test` also runs
//! on the checked-in corpus (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcache::fuzzing::blob_read(data);
});
