//! Property tests of the parsers that read untrusted bytes: a shard-set index and a shard
//! (its length prefix, JSON header and tensor data), fed whole, mutated, or as random bytes
//! in random chunks. Whatever arrives, the outcome is an index or a named error, never a
//! panic; a mutated shard never yields a tensor outside its bytes. Bounded (a few hundred
//! cases each) so CI runs it every time.

mod common;

use common::*;
use orfeas_engine::weights::index::INDEX_FILE;
use orfeas_engine::weights::parse::{FeedError, ShardParser};
use orfeas_engine::weights::{ShardIndex, ShardInfo};
use proptest::prelude::*;

/// A real index and one of its shards (bytes), from a small packed model.
fn sample() -> (Vec<u8>, ShardInfo, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(3, 6, 400);
    let index = packed(&model, 4 << 10, dir.path());
    let shards = shard_dir(dir.path());
    let index_bytes = std::fs::read(shards.join(INDEX_FILE)).unwrap();
    let shard = index.shards[0].clone();
    let bytes = std::fs::read(shards.join(&shard.file)).unwrap();
    (index_bytes, shard, bytes)
}

/// Feed `bytes` in chunks of the given sizes; the outcome as text, checking every tensor
/// handed out lies within the shard.
fn feed(shard: &ShardInfo, bytes: &[u8], chunks: &[usize]) -> Result<usize, String> {
    let mut parser = ShardParser::new(shard);
    let mut tensors = 0usize;
    let mut at = 0usize;
    let mut sizes = chunks.iter().cycle();
    while at < bytes.len() {
        let n = (*sizes.next().unwrap()).max(1).min(bytes.len() - at);
        let result = parser.feed(&bytes[at..at + n], &mut |tensor| -> Result<(), String> {
            assert!(
                tensor.bytes.len() <= bytes.len(),
                "a tensor beyond the shard"
            );
            tensors += 1;
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(FeedError::Shard(e)) => return Err(e.to_string()),
            Err(FeedError::Sink(e)) => return Err(e),
        }
        at += n;
    }
    parser.finish().map(|_| tensors).map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_an_index_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(index) = ShardIndex::from_json(&bytes) {
            prop_assert!(index.shards.iter().all(|s| s.size <= orfeas_engine::weights::index::MAX_SHARD_BYTES));
        }
    }

    #[test]
    fn a_mutated_index_is_an_index_that_holds_or_an_error(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12)
    ) {
        let (mut bytes, _, _) = sample();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(index) = ShardIndex::from_json(&bytes) {
            // Whatever got through still keeps every promise the loader relies on.
            for shard in &index.shards {
                prop_assert!(orfeas_engine::weights::index::is_plain_file_name(&shard.file));
                prop_assert!(shard.size <= orfeas_engine::weights::index::MAX_SHARD_BYTES);
            }
            let total: u64 = index.shards.iter().map(|s| s.size).sum();
            prop_assert!(index.metadata.total_size <= total);
        }
    }

    #[test]
    fn a_mutated_shard_streams_to_its_tensors_or_a_named_error(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        chunks in prop::collection::vec(1usize..700, 1..6),
    ) {
        let (_, shard, mut bytes) = sample();
        let intact = bytes.clone();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        match feed(&shard, &bytes, &chunks) {
            // Only the intact shard passes its size and hash.
            Ok(tensors) => {
                prop_assert_eq!(&bytes, &intact);
                prop_assert!(tensors > 0);
            }
            Err(message) => prop_assert!(!message.is_empty()),
        }
    }

    #[test]
    fn random_bytes_as_a_shard_are_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunks in prop::collection::vec(1usize..300, 1..4),
    ) {
        let (_, mut shard, _) = sample();
        shard.size = bytes.len() as u64;
        prop_assert!(feed(&shard, &bytes, &chunks).is_err());
    }
}
