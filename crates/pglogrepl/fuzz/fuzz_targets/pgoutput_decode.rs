//! Feeds arbitrary bytes to the pgoutput decoder: it must return `Ok` or a `DecodeError`
//! for every input, never panic (nor abort on a huge allocation), and `decode` and
//! `decode_bytes` must agree.
//!
//! Run from `crates/pglogrepl`: `cargo +nightly fuzz run pgoutput_decode` (seed inputs:
//! `fuzz/seeds/pgoutput_decode`, see the crate README).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pglogrepl::pgoutput::{DecodeError, decode, decode_bytes};

fuzz_target!(|data: &[u8]| {
    let copied = decode(data);
    let shared = decode_bytes(Bytes::copy_from_slice(data));
    assert_eq!(copied, shared);
    if let Err(DecodeError::Truncated {
        offset, available, ..
    }) = copied
    {
        assert_eq!(offset + available, data.len());
    }
});
