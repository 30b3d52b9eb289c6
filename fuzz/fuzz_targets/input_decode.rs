//! `medguard_input::decode`, the host's reading of an untrusted image file
//! (PNG, `.npy`) into a batch for the bundled model's input spec, and
//! `read_npz_images`/`read_npz_array`, the reading of calibration and
//! evaluation archives (`.npz`). The limits under test are the crate's own:
//! dimensions are checked before anything is allocated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let m = medguard_fuzz::bundled_manifest();
    if let Ok(batch) = medguard_input::decode(data, &m.input, m.max_batch) {
        assert!(!batch.is_empty() && batch.len() <= m.max_batch as usize);
        assert_eq!(
            batch.data.len(),
            batch.shape.iter().product::<u32>() as usize
        );
    }
    if data.starts_with(b"PK") {
        let _ = medguard_input::read_npz_images(data, "images");
        let _ = medguard_input::read_npz_array::<bool>(data, "flipped");
    }
});
