//! `medguard_dicom::decode`, the DICOM Part 10 decoder and pixel pipeline
//! that runs inside the sandbox guest, under the bundled model's profile
//! (chest CR/DX, centre square, area resize to 28x28). A guest target: a
//! panic here is contained by the sandbox in production (a refusal of that
//! one file), so findings are recorded in fuzz/README.md and reported
//! upstream to dicom-rs rather than failing the smoke run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = medguard_fuzz::bundled_manifest();
    let Some(profile) = &m.dicom else { return };
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    // Most inputs start after the magic, so the parser is reached.
    let input = if data.get(128..132) == Some(b"DICM") {
        data.to_vec()
    } else {
        bytes.extend_from_slice(data);
        bytes
    };
    let (h, w) = (m.input.shape.height, m.input.shape.width);
    if let Ok(r) = medguard_dicom::decode(&input, &profile.accepts, &profile.preprocessing, h, w) {
        assert_eq!(r.pixels.len(), (h * w) as usize);
        assert!(r.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
