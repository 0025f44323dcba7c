//! Which partition a producer put a key in: what a command that looks one user up (`qualifier
//! show`, `delivery log`) reads instead of the whole topic.

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
    let librdkafka = (crc32fast::hash(key) % count) as i32;
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
}
