//! Bad inputs get a clear error, never a panic, and the session survives them.

use medguard::input::{INPUT_MAX_BYTES, InputError, decode};
use medguard::sandbox::{GuestFailure, SandboxError};
use medguard_tests::{bundled_model, shared_program};

fn rejected(err: SandboxError, needle: &str) {
    match err {
        SandboxError::Guest(GuestFailure::InvalidInput(why)) => {
            assert!(why.contains(needle), "{why:?} should mention {needle:?}")
        }
        other => panic!("expected an input refusal, got {other}"),
    }
}

#[test]
fn the_guest_refuses_wrong_shapes_non_finite_and_out_of_range_values() {
    let model = bundled_model();
    let mut session = shared_program().session(&model).unwrap();
    let ok = vec![0.5f32; 28 * 28];
    rejected(
        session
            .classify(&[1, 1, 28, 27], &ok[..28 * 27])
            .unwrap_err(),
        "expects [batch, 1, 28, 28]",
    );
    rejected(session.classify(&[1, 28, 28], &ok).unwrap_err(), "expects");
    rejected(
        session.classify(&[1, 1, 28, 28], &ok[1..]).unwrap_err(),
        "needs 784 values",
    );
    // More values than max_batch images never enter the guest...
    rejected(
        session
            .classify(&[65, 1, 28, 28], &vec![0.5; 65 * 784])
            .unwrap_err(),
        "takes at most 50176",
    );
    // ...and a shape that claims more images than the values hold is the
    // guest's to refuse.
    rejected(
        session.classify(&[65, 1, 28, 28], &ok).unwrap_err(),
        "batch of 65",
    );
    for (bad, needle) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
        (1.5, "outside"),
    ] {
        let mut data = ok.clone();
        data[100] = bad;
        rejected(
            session.classify(&[1, 1, 28, 28], &data).unwrap_err(),
            needle,
        );
    }
    // The session is still good after every refusal.
    assert_eq!(session.classify(&[1, 1, 28, 28], &ok).unwrap().len(), 1);
}

#[test]
fn files_that_are_not_images_are_refused_by_the_decoder() {
    let spec = bundled_model().manifest().input.clone();
    assert!(matches!(
        decode(b"GIF89a....", &spec, 16),
        Err(InputError::UnknownFormat(_))
    ));
    assert!(matches!(
        decode(b"", &spec, 16),
        Err(InputError::UnknownFormat(_))
    ));
    assert!(matches!(
        decode(b"\x89PNG\r\n\x1a\ngarbage", &spec, 16),
        Err(InputError::Png(_))
    ));
    assert!(matches!(
        decode(b"\x93NUMPY garbage", &spec, 16),
        Err(InputError::Npy(_))
    ));
}

#[test]
fn a_huge_file_is_refused_before_decoding() {
    let spec = bundled_model().manifest().input.clone();
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    huge.resize(INPUT_MAX_BYTES as usize + 1, 0);
    assert!(matches!(
        decode(&huge, &spec, 16),
        Err(InputError::TooLarge)
    ));
}

#[test]
fn a_png_that_claims_enormous_dimensions_is_refused() {
    // A valid IHDR for a 100000 x 100000 16-bit RGB image: decoding would need
    // 60 GB; the decoder's limit refuses it instead of allocating.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr: Vec<u8> = [
        &100_000u32.to_be_bytes()[..],
        &100_000u32.to_be_bytes(),
        &[16, 2, 0, 0, 0],
    ]
    .concat();
    png.extend(13u32.to_be_bytes());
    let chunk = [b"IHDR".as_slice(), &ihdr].concat();
    png.extend(&chunk);
    png.extend(crc32(&chunk).to_be_bytes());
    let spec = bundled_model().manifest().input.clone();
    let err = decode(&png, &spec, 16).unwrap_err();
    assert!(
        matches!(err, InputError::Png(_) | InputError::TooLarge),
        "{err}"
    );
}

/// PNG's CRC-32 (ISO 3309), for building the test chunk above.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
