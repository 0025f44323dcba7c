//! Which partition a producer put a key in: what a command that looks one user up (`qualifier
//! show`, `delivery log`) reads instead of the whole topic; and [`KeyPartitioner`], librdkafka's
//! default partitioner with a faster CRC-32, for producers that write a record per user; and
//! [`key_hash`], for a writer that gathers several users' parts by their partition.

use std::sync::atomic::{AtomicU32, Ordering};

/// The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty `key`
/// among `partitions` (at least one): the key's CRC-32 modulo the count.
pub fn librdkafka_partition(key: &[u8], partitions: u32) -> i32 {
    (key_hash(key) % partitions) as i32
}

/// What [`librdkafka_partition`] takes modulo the partition count: the key's CRC-32, for a
/// writer that places a key later, or among several counts.
pub fn key_hash(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

/// librdkafka's default partitioner, `consistent_random`, computed in Rust: a keyed record goes
/// to the same partition ([`librdkafka_partition`]), so readers find it where they look
/// ([`key_partitions`]); a record without a key goes round the partitions (librdkafka picks
/// one at random). librdkafka's own takes the CRC-32 through zlib's byte-wise code, twice per
/// record: 2.3 % of the delivery worker's CPU with the delivery log on, where crc32fast's
/// vectorized one costs next to nothing. A producer's config takes it with [`Self::configure`].
#[derive(Debug, Default)]
pub struct KeyPartitioner {
    next: AtomicU32,
}

/// A producer context that places records with [`KeyPartitioner`] and, like rdkafka's
/// default one, does nothing with delivery reports: for a producer that learns of failed
/// records otherwise (a transaction's commit fails).
#[derive(Debug, Default)]
pub struct KeyPlaced(KeyPartitioner);

impl rdkafka::ClientContext for KeyPlaced {}

impl rdkafka::producer::ProducerContext<KeyPartitioner> for KeyPlaced {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, (): ()) {}

    fn get_custom_partitioner(&self) -> Option<&KeyPartitioner> {
        Some(&self.0)
    }
}

/// A polled producer whose records are placed by [`KeyPartitioner`]; its config goes through
/// [`KeyPartitioner::configure`].
pub type KeyedProducer = rdkafka::producer::BaseProducer<KeyPlaced, KeyPartitioner>;

impl KeyPartitioner {
    /// Names librdkafka's partitioner this one stands for in `config`, a producer's whose
    /// context returns a `KeyPartitioner`. Required: rdkafka hands the partitioner to the
    /// config's default topic config, which librdkafka makes only once a topic-level property
    /// is set (without one, creating the producer dereferences a null pointer).
    pub fn configure(config: &mut rdkafka::ClientConfig) -> &mut rdkafka::ClientConfig {
        config.set("partitioner", "consistent_random")
    }
}

impl rdkafka::producer::Partitioner for KeyPartitioner {
    fn partition(
        &self,
        _topic: &str,
        key: Option<&[u8]>,
        partition_cnt: i32,
        _is_partition_available: impl Fn(i32) -> bool,
    ) -> i32 {
        let count = match u32::try_from(partition_cnt) {
            Ok(count) if count > 0 => count,
            // librdkafka's "unassigned": it never asks without partitions.
            _ => return -1,
        };
        match key {
            Some(key) if !key.is_empty() => librdkafka_partition(key, count),
            _ => (self.next.fetch_add(1, Ordering::Relaxed) % count) as i32,
        }
    }
}

/// The partitions `key` goes to among `partitions`, most likely first: librdkafka's default
/// partitioner (`consistent_random`: CRC-32 of the key), which every segment-relay producer
/// uses, then the Java client's default (murmur2), for input produced by JVM services.
pub fn key_partitions(key: &[u8], partitions: i32) -> Vec<i32> {
    let Ok(count) = u32::try_from(partitions) else {
        return Vec::new();
    };
    if count == 0 {
        return Vec::new();
    }
    let librdkafka = librdkafka_partition(key, count);
    let java = ((murmur2(key) & 0x7fff_ffff) % count) as i32;
    if librdkafka == java {
        vec![librdkafka]
    } else {
        vec![librdkafka, java]
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, seed 0x9747b28c).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients_known_answers() {
        // From Kafka's UtilsTest.testMurmur2.
        for (key, expected) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn the_librdkafka_partition_comes_first() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        let partitions = key_partitions(b"123456789", 12);
        assert_eq!(partitions[0], (0xcbf4_3926_u32 % 12) as i32);
        assert!(partitions.iter().all(|p| (0..12).contains(p)));
        assert_eq!(key_partitions(b"u", 1), [0]);
        assert!(key_partitions(b"u", 0).is_empty());
    }

    /// Records where each acknowledged record went.
    #[derive(Default)]
    struct Placed {
        partitioner: Option<KeyPartitioner>,
        partitions: std::sync::Mutex<Vec<(Vec<u8>, i32)>>,
    }

    impl rdkafka::ClientContext for Placed {}

    impl rdkafka::producer::ProducerContext<KeyPartitioner> for Placed {
        type DeliveryOpaque = ();

        fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, (): ()) {
            use rdkafka::Message as _;
            let message = result.as_ref().expect("the mock cluster took the record");
            let key = message.key().unwrap_or_default().to_vec();
            self.partitions
                .lock()
                .unwrap()
                .push((key, message.partition()));
        }

        fn get_custom_partitioner(&self) -> Option<&KeyPartitioner> {
            self.partitioner.as_ref()
        }
    }

    /// Writes a record per key to `topic` with librdkafka's own partitioner or with
    /// [`KeyPartitioner`]; the partition of each key, in order of the keys.
    fn partitions_of(
        brokers: &str,
        topic: &str,
        keys: &[Vec<u8>],
        ours: bool,
    ) -> Vec<(Vec<u8>, i32)> {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let context = Placed {
            partitioner: ours.then(KeyPartitioner::default),
            ..Placed::default()
        };
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        let producer: BaseProducer<Placed, KeyPartitioner> = KeyPartitioner::configure(&mut config)
            .create_with_context(context)
            .unwrap();
        for key in keys {
            producer
                .send(BaseRecord::<[u8], [u8]>::to(topic).key(key).payload(b"x"))
                .unwrap();
        }
        producer.flush(std::time::Duration::from_secs(30)).unwrap();
        let mut placed = std::mem::take(&mut *producer.context().partitions.lock().unwrap());
        placed.sort();
        placed
    }

    #[test]
    fn keyed_records_go_where_librdkafkas_own_partitioner_puts_them() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        let keys: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("{:0>38}", i * 7919).into_bytes())
            .chain([b"u".to_vec(), "ü-ß".as_bytes().to_vec()])
            .collect();
        for count in [1, 6, 7, 64] {
            let topic = format!("key-partitions-{count}");
            cluster.create_topic(&topic, count, 1).unwrap();
            let theirs = partitions_of(&cluster.bootstrap_servers(), &topic, &keys, false);
            let ours = partitions_of(&cluster.bootstrap_servers(), &topic, &keys, true);
            assert_eq!(ours.len(), keys.len());
            assert_eq!(ours, theirs, "{count} partitions");
            for (key, partition) in &ours {
                assert_eq!(key_partitions(key, count)[0], *partition);
            }
            if count < 10 {
                let used: std::collections::HashSet<i32> = ours.iter().map(|(_, p)| *p).collect();
                assert_eq!(
                    used.len(),
                    count as usize,
                    "every partition takes some keys"
                );
            }
        }
    }

    #[test]
    fn records_without_a_key_go_round_the_partitions() {
        use rdkafka::producer::Partitioner as _;
        let partitioner = KeyPartitioner::default();
        let picked: Vec<i32> = (0..8)
            .map(|_| partitioner.partition("t", None, 3, |_| true))
            .collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(partitioner.partition("t", Some(b""), 3, |_| true), 2);
        assert_eq!(partitioner.partition("t", Some(b"u"), 0, |_| true), -1);
    }
}
