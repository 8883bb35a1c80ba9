//! A streaming shard writer (one of several outputs written at once) writes the same bytes as a
//! plain one, and leaves its pages out of the page cache, as `mincore` reports.

use chatvec_format::writer::{plan_shards, ShardWriter, TensorSpec};
use memmap2::Mmap;

/// How many of `path`'s pages are in the page cache (Linux `mincore`).
fn resident_pages(path: &std::path::Path) -> (usize, usize) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: the file is not changed while mapped (the writer is done).
    let map = unsafe { Mmap::map(&file) }.unwrap();
    let page = 4096;
    let pages = map.len().div_ceil(page);
    let mut flags = vec![0u8; pages];
    // SAFETY: `flags` has one byte per page of the mapping.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), flags.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    (flags.iter().filter(|f| *f & 1 == 1).count(), pages)
}

#[test]
fn a_streaming_writer_writes_the_same_bytes_and_drops_them_from_the_page_cache() {
    // Not /tmp, which may be tmpfs (whose pages cannot be dropped): the target directory.
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let n = 96 << 20;
    let tensors = vec![TensorSpec { name: "w".into(), dtype: "U8".into(), shape: vec![n], bytes: n, index: 0 }];
    let shards = plan_shards(tensors, u64::MAX, "model");
    let data: Vec<u8> = (0..n).map(|i| (i * 31 + i / 4099) as u8).collect();
    let mut files = vec![];
    for streaming in [false, true] {
        let dir = root.path().join(format!("streaming-{streaming}"));
        std::fs::create_dir(&dir).unwrap();
        let start = if streaming { ShardWriter::start_streaming } else { ShardWriter::start };
        let mut w = start(&dir, shards.clone()).unwrap();
        for block in data.chunks(16 << 20) {
            w.push(block.to_vec()).unwrap();
        }
        w.finish().unwrap();
        files.push(dir.join(&shards[0].file));
    }
    let (plain, streamed) = (std::fs::read(&files[0]).unwrap(), std::fs::read(&files[1]).unwrap());
    assert!(plain == streamed, "the streamed shard differs from the plain one");
    drop((plain, streamed));
    // Reading them back cached both; write the streaming one again and look before reading.
    let again = root.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let mut w = ShardWriter::start_streaming(&again, shards.clone()).unwrap();
    data.chunks(16 << 20).for_each(|block| w.push(block.to_vec()).unwrap());
    w.finish().unwrap();
    let (resident, pages) = resident_pages(&again.join(&shards[0].file));
    assert!(resident * 10 < pages, "{resident} of {pages} pages still cached");
}
