//! The seal envelope's readers (`unseal`, `unseal_into`, `unseal_into_slice`, `unseal_object`), plain and
//! encrypted, against random bytes and damaged envelopes: an error or the very chunk that was sealed,
//! never a panic. Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated_any};
use strata_seal::{chunk_id, ChunkCipher, Sealer};

/// Bytes that compress (so the zstd path is taken) followed by some that do not.
fn plain() -> Vec<u8> {
    let mut p = b"heap tuple 4711 ".repeat(300);
    p.extend((0..500u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    p
}

fn sealers() -> [Sealer; 2] {
    [Sealer::default(), Sealer::encrypted(ChunkCipher::new(&[7; 32]))]
}

/// Every way of opening `sealed`: an error, or exactly the plain bytes that `id` names.
fn every_reader(sealer: &Sealer, sealed: &[u8], plain: &[u8]) -> Result<(), TestCaseError> {
    let id = sealer.chunk_id(plain);
    match sealer.unseal(sealed, &id) {
        Ok(out) => check!(out == plain, "unseal accepted {} bytes that are not the chunk", out.len()),
        Err(e) => check!(!e.to_string().is_empty(), "empty error"),
    }
    let mut reused = vec![0xEE; 100];
    if sealer.unseal_into(sealed, &id, &mut reused).is_ok() {
        check!(reused == plain, "unseal_into accepted bytes that are not the chunk");
    }
    let mut slice = vec![0xEE; plain.len() + 64];
    match sealer.unseal_into_slice(sealed, &id, &mut slice) {
        Ok(n) => check!(&slice[..n] == plain, "unseal_into_slice accepted bytes that are not the chunk"),
        Err(e) => drop(e.to_string()),
    }
    // A buffer too small for the header's length is an error, not an out-of-bounds write.
    let _ = sealer.unseal_into_slice(sealed, &id, &mut slice[..plain.len() / 2]);
    // Records are sealed objects: no id to check, but the length must match and the bytes must be bounded.
    if let Ok(out) = sealer.unseal_object(sealed) {
        let header_len = sealed.get(4..8).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
        check!(Some(out.len()) == header_len, "unseal_object returned {} bytes, not the header's length", out.len());
    }
    Ok(())
}

fn valid_envelopes() -> Vec<Vec<u8>> {
    let p = plain();
    let mut all = Vec::new();
    for s in sealers() {
        all.push(s.seal(&p, 1));
        all.push(s.seal(&p, 0));
        all.push(s.seal_object(b"a backup record"));
        all.push(s.seal(&[], 3));
    }
    all
}

#[test]
fn fuzz_seal_random_bytes() {
    let p = plain();
    fuzz("seal/random", 512, bytes(200), |b| {
        for s in sealers() {
            every_reader(&s, &b, &p)?;
        }
        Ok(())
    });
}

/// Random bodies behind a valid-looking header (random bytes stop at the version byte).
#[test]
fn fuzz_seal_random_body() {
    let p = plain();
    let strategy = (0..2u8, 0..2u8, any::<u32>(), bytes(300));
    fuzz("seal/random-body", 512, strategy, |(compression, cipher, raw_len, body)| {
        let raw_len = if raw_len % 2 == 0 { raw_len % 10_000 } else { raw_len };
        let mut sealed = vec![1, compression, cipher, 0];
        sealed.extend_from_slice(&raw_len.to_le_bytes());
        sealed.extend_from_slice(&body);
        for s in sealers() {
            every_reader(&s, &sealed, &p)?;
        }
        Ok(())
    });
}

#[test]
fn fuzz_seal_mutated() {
    let p = plain();
    fuzz("seal/mutated", 512, mutated_any(valid_envelopes()), |b| {
        for s in sealers() {
            every_reader(&s, &b, &p)?;
        }
        Ok(())
    });
}

/// Any chunk, at any level, with and without a key, unseals to itself.
#[test]
fn fuzz_seal_round_trip() {
    let strategy = (prop::collection::vec(any::<u8>(), 0..5000), 0..40usize, -1..4i32);
    fuzz("seal/round-trip", 256, strategy, |(noise, repeat, level)| {
        let mut p = noise.clone();
        for _ in 0..repeat {
            p.extend_from_slice(&noise[..noise.len().min(100)]);
        }
        for s in sealers() {
            let sealed = s.seal(&p, level);
            check!(sealed.len() <= strata_seal::sealed_bound(p.len()), "sealed past its bound");
            let back = s.unseal(&sealed, &s.chunk_id(&p)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check!(back == p, "chunk does not round-trip");
            let object = s.unseal_object(&s.seal_object(&p)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check!(object == p, "object does not round-trip");
        }
        check!(Sealer::default().chunk_id(&p) == chunk_id(&p), "plain chunk id");
        Ok(())
    });
}
