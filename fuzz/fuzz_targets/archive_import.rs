//! Fuzz target `archive_import`: arbitrary bytes imported as an export archive.
//! The body is `blobcache::fuzzing::archive_import`, which `cargo test` also runs
//! on the checked-in corpus (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcache::fuzzing::archive_import(data);
});
