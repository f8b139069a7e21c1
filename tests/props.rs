//! Properties of the small pure pieces every entry goes through: key
//! encoding, the CBOR record format, and TTL arithmetic at its edges.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blobcache::fuzzing::{Codec, Record, decode_record, encode_record};
use blobcache::key::{self, MAX_SIGNATURE_LEN};
use blobcache::{BlobHash, Clock, ManualClock, PutOptions, Store, StoreOptions, system_time_ms};
use ciborium::Value;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases(n: u32) -> Config {
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------

/// Backends from a tiny alphabet, so that equal names, prefixes of each
/// other and multi-byte characters all come up often.
fn backend() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop::sample::select(vec!['a', 'b', 'é', '/']), 1..4)
        .prop_map(|cs| cs.into_iter().collect())
}

fn signature() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(vec![0u8, 1, b'a', b'b', 0xff]), 0..5)
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn key_encoding_is_injective(b1 in backend(), s1 in signature(), b2 in backend(), s2 in signature()) {
        let k1 = key::encode(&b1, &s1).unwrap();
        let k2 = key::encode(&b2, &s2).unwrap();
        prop_assert_eq!(k1 == k2, (&b1, &s1) == (&b2, &s2));
        prop_assert_eq!(key::decode(&k1), Some((b1, s1)));
    }

    #[test]
    fn backend_prefix_selects_exactly_its_keys(b1 in backend(), s1 in signature(), b2 in backend(), p in signature()) {
        let k = key::encode(&b1, &s1).unwrap();
        let whole = key::prefix(&b2, b"").unwrap();
        prop_assert_eq!(k.starts_with(&whole), b1 == b2);
        let part = key::prefix(&b2, &p).unwrap();
        prop_assert_eq!(k.starts_with(&part), b1 == b2 && s1.starts_with(&p));
    }

    /// Sorted, the keys of one backend are one run, ordered by signature.
    #[test]
    fn keys_of_a_backend_sort_together(pairs in proptest::collection::vec((backend(), signature()), 1..40)) {
        let mut keys: Vec<Vec<u8>> = pairs.iter().map(|(b, s)| key::encode(b, s).unwrap()).collect();
        keys.sort();
        keys.dedup();
        let decoded: Vec<(String, Vec<u8>)> = keys.iter().map(|k| key::decode(k).unwrap()).collect();
        let mut seen_done = std::collections::HashSet::new();
        for w in decoded.windows(2) {
            let ((b1, s1), (b2, s2)) = (&w[0], &w[1]);
            if b1 == b2 {
                prop_assert!(s1 < s2, "signatures of {} out of order", b1);
            } else {
                prop_assert!(seen_done.insert(b1.clone()), "backend {} split in two runs", b1);
                prop_assert!(!seen_done.contains(b2), "backend {} split in two runs", b2);
            }
        }
    }

    /// Decoding never panics, and whatever decodes re-encodes to the same
    /// bytes unless the signature is longer than encode allows.
    #[test]
    fn key_decode_of_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Some((b, s)) = key::decode(&bytes) {
            prop_assert_eq!(key::encode(&b, &s).unwrap(), bytes);
        }
    }
}

#[test]
fn over_long_signatures_are_refused_not_truncated() {
    let sig = vec![b'x'; MAX_SIGNATURE_LEN + 1];
    assert!(key::encode("b", &sig).is_err());
    assert!(key::encode("b", &sig[1..]).is_ok());
}

// ---------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..8).prop_map(|cs| cs.into_iter().collect())
}

fn record() -> impl Strategy<Value = Record> {
    (
        (
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), text()),
        (
            proptest::option::of(text()),
            proptest::collection::vec((text(), text()), 0..3),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((h, z, inline, rs, ss), (ca, fa, ea, cat), (ct, hd, n, la, p))| Record {
                version: 1,
                hash: BlobHash(h),
                codec: if z { Codec::Zstd } else { Codec::Raw },
                inline,
                raw_size: rs,
                stored_size: ss,
                created_at: ca,
                fetched_at: fa,
                expires_at: ea,
                category: cat,
                content_type: ct,
                headers: hd,
                hits: n,
                last_access: la,
                pinned: p,
            },
        )
}

/// A CBOR value of a few shapes, as a newer writer might add.
fn cbor_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        text().prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        any::<f64>().prop_map(Value::Float),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((text().prop_map(Value::Text), inner), 0..3)
                .prop_map(Value::Map),
        ]
    })
}

const KNOWN_FIELDS: &[&str] = &[
    "v", "h", "c", "i", "rs", "ss", "ca", "fa", "ea", "cat", "ct", "hd", "n", "la", "p",
];

fn as_map(record: &Record) -> Vec<(Value, Value)> {
    let v: Value = ciborium::from_reader(&encode_record(record)[..]).unwrap();
    match v {
        Value::Map(m) => m,
        other => panic!("a record encodes as a map, not {other:?}"),
    }
}

fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn record_round_trips(r in record()) {
        prop_assert_eq!(decode_record(&encode_record(&r)).unwrap(), r);
    }

    /// A record written by a newer version, with fields this one does not
    /// know (anywhere in the map), still decodes to the same record.
    #[test]
    fn unknown_fields_are_tolerated(
        r in record(),
        extra in proptest::collection::vec((text(), cbor_value(), any::<usize>()), 1..4),
    ) {
        let mut map = as_map(&r);
        for (name, value, at) in extra {
            if KNOWN_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let at = at % (map.len() + 1);
            map.insert(at, (Value::Text(name), value));
        }
        prop_assert_eq!(decode_record(&to_bytes(&Value::Map(map))).unwrap(), r);
    }

    /// A record written before the optional fields existed decodes with
    /// their defaults.
    #[test]
    fn optional_fields_may_be_absent(r in record()) {
        let optional = ["ct", "hd", "n", "la", "p"];
        let map: Vec<(Value, Value)> = as_map(&r)
            .into_iter()
            .filter(|(k, _)| !matches!(k, Value::Text(t) if optional.contains(&t.as_str())))
            .collect();
        let back = decode_record(&to_bytes(&Value::Map(map))).unwrap();
        let want = Record {
            content_type: None,
            headers: Vec::new(),
            hits: 0,
            last_access: 0,
            pinned: false,
            ..r
        };
        prop_assert_eq!(back, want);
    }

    /// Damaged bytes never panic; a cut-short record is an error.
    #[test]
    fn damaged_records_are_errors(r in record(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
        let bytes = encode_record(&r);
        let mut flipped = bytes.clone();
        let i = flip.0 % flipped.len();
        flipped[i] ^= flip.1;
        let _ = decode_record(&flipped);
        prop_assert!(decode_record(&bytes[..cut % bytes.len()]).is_err());
    }
}

#[test]
fn a_missing_required_field_is_an_error() {
    let r = Record {
        version: 1,
        hash: BlobHash::of(b"x"),
        codec: Codec::Raw,
        inline: true,
        raw_size: 1,
        stored_size: 1,
        created_at: 0,
        fetched_at: 0,
        expires_at: 0,
        category: "metadata".into(),
        content_type: None,
        headers: Vec::new(),
        hits: 0,
        last_access: 0,
        pinned: false,
    };
    for field in ["h", "ea", "c"] {
        let map: Vec<(Value, Value)> = as_map(&r)
            .into_iter()
            .filter(|(k, _)| *k != Value::Text(field.into()))
            .collect();
        assert!(
            decode_record(&to_bytes(&Value::Map(map))).is_err(),
            "{field}"
        );
    }
}

// ---------------------------------------------------------------------
// TTL arithmetic
// ---------------------------------------------------------------------

fn instant() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1_000_000_000_000),
        any::<u64>(),
    ]
}

fn ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(999_999)),
        Just(Duration::MAX),
        Just(Duration::from_millis(u64::MAX)),
        any::<u64>().prop_map(Duration::from_millis),
        any::<(u64, u32)>().prop_map(|(s, n)| Duration::new(s, n % 1_000_000_000)),
    ]
}

/// The expected expiry: whole milliseconds, saturating at `u64::MAX`.
fn expiry(now: u64, ttl: Duration) -> u64 {
    let sum = u128::from(now) + ttl.as_millis();
    u64::try_from(sum).unwrap_or(u64::MAX)
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn manual_clock_advances_saturating(start in instant(), by in ttl()) {
        let clock = ManualClock::new(start);
        clock.advance(by);
        prop_assert_eq!(clock.now_ms(), expiry(start, by));
    }

    /// Times before the epoch read 0; after it, whole milliseconds.
    #[test]
    fn system_time_converts_saturating(secs in any::<u64>(), nanos in 0u32..1_000_000_000, before in any::<bool>()) {
        let d = Duration::new(secs, nanos);
        let t = if before { UNIX_EPOCH.checked_sub(d) } else { UNIX_EPOCH.checked_add(d) };
        if let Some(t) = t {
            let want = if before && !d.is_zero() {
                0
            } else {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
            };
            prop_assert_eq!(system_time_ms(t), want);
        }
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// Through a real store: the expiry a put reports, and whether get,
    /// get_stale, stats and purge_expired see the entry as expired, at any
    /// later (or earlier) clock reading.
    #[test]
    fn store_ttl_edges(start in instant(), ttl in ttl(), later in instant()) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let store = Store::open(dir.path(), StoreOptions::default().clock(clock.clone())).unwrap();
        let report = store.put("b", "s", b"body", &PutOptions::new().ttl(ttl)).unwrap();
        let exp = expiry(start, ttl);
        prop_assert_eq!(report.expires_at, exp);
        for now in [start, later] {
            clock.set(now);
            let expired = now >= exp;
            prop_assert_eq!(store.get("b", "s").unwrap().is_none(), expired);
            prop_assert_eq!(store.get_stale("b", "s").unwrap().unwrap().stale, expired);
            prop_assert_eq!(store.meta("b", "s").unwrap().unwrap().is_expired_at(now), expired);
            prop_assert_eq!(store.stats().unwrap().expired, u64::from(expired));
        }
        prop_assert_eq!(store.purge_expired().unwrap(), u64::from(later >= exp));
    }
}

#[test]
fn system_clock_before_epoch_reads_zero() {
    let t = UNIX_EPOCH - Duration::from_secs(86_400);
    assert_eq!(system_time_ms(t), 0);
    assert_eq!(system_time_ms(UNIX_EPOCH), 0);
    assert!(system_time_ms(SystemTime::now()) > 1_600_000_000_000);
}
