//! `Hashed::read`: one pass that reads and hashes, sequential or overlapped,
//! must give exactly the bytes and the digest of the input, and stop one
//! byte past the cap.

#![allow(clippy::unwrap_used)]

use medguard_attest::{Hashed, Sha256Digest};

fn data(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

#[test]
fn bytes_and_digest_match_the_input_whatever_the_hint() {
    // Sizes around the 8 MiB chunk; hints exact, short (the tail is read
    // sequentially), long (the buffer is truncated) and absent.
    for len in [0, 1, 4096, (8 << 20) - 1, 8 << 20, (8 << 20) + 1, 20 << 20] {
        let input = data(len);
        let expected = Sha256Digest::of(&input);
        for hint in [len as u64, (len / 2) as u64, len as u64 + 12345, 0] {
            let h = Hashed::read(input.as_slice(), 64 << 20, hint)
                .unwrap()
                .unwrap();
            assert_eq!(h.bytes(), input.as_slice(), "len {len} hint {hint}");
            assert_eq!(h.digest(), expected, "len {len} hint {hint}");
        }
    }
}

#[test]
fn more_than_the_cap_is_refused_without_draining_the_reader() {
    let input = data(20 << 20);
    let cap = (12 << 20) as u64;
    assert!(Hashed::read(input.as_slice(), cap, cap).unwrap().is_none());
    assert!(Hashed::read(input.as_slice(), cap, 0).unwrap().is_none());
    // Exactly the cap is fine.
    let exact = &input[..cap as usize];
    assert!(Hashed::read(exact, cap, cap).unwrap().is_some());
    // An endless reader costs at most one byte past the cap.
    let endless = std::io::repeat(7);
    assert!(Hashed::read(endless, cap, u64::MAX).unwrap().is_none());
}

#[test]
fn read_errors_are_reported() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
    }
    for hint in [0, 30 << 20] {
        let err = Hashed::read(Failing(10 << 20), 64 << 20, hint).unwrap_err();
        assert_eq!(err.to_string(), "disk gone");
    }
}
