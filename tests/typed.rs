//! Typed values: CBOR and JSON round trips; a value of an older shape is a
//! miss, not an error.

mod common;

use std::collections::BTreeMap;

use blobcache::{PutOptions, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct MovieV1 {
    id: u32,
    title: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct MovieV2 {
    id: u32,
    title: String,
    genres: Vec<String>,
    ratings: BTreeMap<String, f64>,
    runtime: Option<u32>,
}

fn matrix() -> MovieV2 {
    MovieV2 {
        id: 603,
        title: "The Matrix".into(),
        genres: vec!["Action".into(), "Science Fiction".into()],
        ratings: BTreeMap::from([("imdb".into(), 8.7), ("tmdb".into(), 8.2)]),
        runtime: Some(136),
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let (dir, store, _clock) = common::store_with_clock();
    (dir, store)
}

#[test]
fn cbor_round_trip() {
    let (_dir, store) = store();
    store
        .put_value("tmdb", "movie/603", &matrix(), &PutOptions::new())
        .unwrap();
    let back: Option<MovieV2> = store.get_value("tmdb", "movie/603").unwrap();
    assert_eq!(back, Some(matrix()));
    let meta = store.meta("tmdb", "movie/603").unwrap().unwrap();
    assert_eq!(meta.content_type.as_deref(), Some("application/cbor"));
    assert_eq!(store.get_value::<MovieV2>("tmdb", "movie/9").unwrap(), None);
}

#[test]
fn json_round_trip_is_plain_json() {
    let (_dir, store) = store();
    let opts = PutOptions::new().content_type("application/vnd.tmdb+json");
    store
        .put_json("tmdb", "movie/603", &matrix(), &opts)
        .unwrap();
    let raw = store.get("tmdb", "movie/603").unwrap().unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&raw.data).unwrap();
    assert_eq!(parsed["title"], "The Matrix");
    assert_eq!(
        raw.meta.content_type.as_deref(),
        Some("application/vnd.tmdb+json")
    );
    let back: Option<MovieV2> = store.get_json("tmdb", "movie/603").unwrap();
    assert_eq!(back, Some(matrix()));
}

#[test]
fn old_format_value_is_a_miss_and_stays_until_overwritten() {
    let (_dir, store) = store();
    let old = MovieV1 {
        id: 603,
        title: "The Matrix".into(),
    };
    store
        .put_value("tmdb", "movie/603", &old, &PutOptions::new())
        .unwrap();
    store
        .put_json("tmdb", "movie/603.json", &old, &PutOptions::new())
        .unwrap();
    // The new struct needs fields the old value lacks: a miss, not an error.
    assert_eq!(
        store.get_value::<MovieV2>("tmdb", "movie/603").unwrap(),
        None
    );
    assert_eq!(
        store.get_json::<MovieV2>("tmdb", "movie/603.json").unwrap(),
        None
    );
    // The older shape still reads it; the caller refetches and overwrites.
    assert_eq!(
        store.get_value::<MovieV1>("tmdb", "movie/603").unwrap(),
        Some(old)
    );
    store
        .put_value("tmdb", "movie/603", &matrix(), &PutOptions::new())
        .unwrap();
    assert_eq!(
        store.get_value::<MovieV2>("tmdb", "movie/603").unwrap(),
        Some(matrix())
    );
}

#[test]
fn foreign_bytes_are_a_miss_for_both_formats() {
    let (_dir, store) = store();
    store
        .put("tmdb", "raw", b"\xff\x00 not cbor {", &PutOptions::new())
        .unwrap();
    assert_eq!(store.get_value::<MovieV1>("tmdb", "raw").unwrap(), None);
    assert_eq!(store.get_json::<MovieV1>("tmdb", "raw").unwrap(), None);
}

#[test]
fn unencodable_json_value_is_a_typed_error() {
    let (_dir, store) = store();
    // JSON object keys must be strings.
    let map = BTreeMap::from([((1, 2), "pair")]);
    let err = store
        .put_json("x", "map", &map, &PutOptions::new())
        .unwrap_err();
    assert!(
        matches!(err, blobcache::Error::Encode { format: "JSON", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("x/map"), "{err}");
    assert!(store.get_stale("x", "map").unwrap().is_none());
    // CBOR allows such keys.
    store
        .put_value("x", "map", &map, &PutOptions::new())
        .unwrap();
    let back: Option<BTreeMap<(i32, i32), String>> = store.get_value("x", "map").unwrap();
    assert_eq!(back.unwrap()[&(1, 2)], "pair");
}
