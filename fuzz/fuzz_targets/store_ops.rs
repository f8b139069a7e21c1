//! Fuzz target `store_ops`: operation sequences against a real store and an in-memory model.
//! The body is `blobcache::fuzzing::store_ops`, which `cargo test` also runs
//! on the checked-in corpus (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcache::fuzzing::store_ops(data);
});
