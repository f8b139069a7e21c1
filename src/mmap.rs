//! The crate's only `unsafe` code: mapping a blob file into memory.

use std::fs::File;
use std::io;

use memmap2::Mmap;

/// Maps a blob file read-only.
pub(crate) fn map_blob(file: &File) -> io::Result<Mmap> {
    // SAFETY: memmap2 requires that the mapped file is not modified or
    // truncated while the map is alive, or reads could see changing bytes or
    // fault. Blob files are immutable by construction: they are written
    // under tmp/ and renamed or linked into place complete, and blobcache
    // never writes to a blob path again; replacing (recompression) renames a
    // new file over the name, and deleting unlinks it, and neither affects
    // an existing map of the old inode. Only a foreign process writing into
    // the cache directory could break this, and the directory is 0700.
    // Whatever the mapped bytes are, they are hash-verified before use.
    #[allow(unsafe_code)]
    unsafe {
        Mmap::map(file)
    }
}

/// Maps a pack file read-only.
pub(crate) fn map_pack(file: &File) -> io::Result<Mmap> {
    // SAFETY: the same contract as for blob files. Packs are append-only:
    // a byte, once written before the pack's valid tail, is never written
    // again; a writer only appends past the end, which a map made earlier
    // does not cover. Recovery truncates only a torn tail of a sealed pack,
    // bytes past every valid needle, which no reader is ever pointed at;
    // GC removes whole packs (unlink leaves existing maps intact). Readers
    // only touch the byte range of a located needle after checking it lies
    // inside the map, and verify checksum and hash before using a byte.
    #[allow(unsafe_code)]
    unsafe {
        Mmap::map(file)
    }
}
