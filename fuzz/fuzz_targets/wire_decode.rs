//! Fuzz target `wire_decode`: arbitrary bytes as owner/guest socket messages and frames.
//! The body is `blobcache::fuzzing::wire_decode`, which `cargo test` also runs
//! on the checked-in corpus (tests/fuzz_corpus.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blobcache::fuzzing::wire_decode(data);
});
