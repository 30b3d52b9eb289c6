//! Canonical NaNs: the one part of wasm arithmetic whose result differs
//! between CPUs is the sign and payload of a NaN it makes. The guest makes
//! every NaN canonical after each tract operator (`runtime::execute`) and in
//! everything it returns, so that no answer depends on them.

/// A value whose NaNs can be made wasm's canonical NaN (positive, quiet,
/// no payload).
pub trait Canonical {
    /// `self` with every NaN replaced by the canonical one.
    fn canonical(self) -> Self;
}

impl Canonical for f32 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            f32::from_bits(0x7fc0_0000)
        } else {
            self
        }
    }
}

impl Canonical for f64 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            f64::from_bits(0x7ff8_0000_0000_0000)
        } else {
            self
        }
    }
}

impl Canonical for tract_onnx::prelude::f16 {
    fn canonical(self) -> Self {
        if self.is_nan() {
            Self::from_bits(0x7e00)
        } else {
            self
        }
    }
}

impl<T: Canonical> Canonical for Vec<T> {
    fn canonical(self) -> Self {
        self.into_iter().map(Canonical::canonical).collect()
    }
}

impl<T: Canonical> Canonical for Option<T> {
    fn canonical(self) -> Self {
        self.map(Canonical::canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::Canonical;

    #[test]
    fn every_nan_becomes_the_positive_quiet_one_and_nothing_else_moves() {
        let negative = f32::from_bits(0xffc0_0000);
        let payload = f32::from_bits(0x7f80_0001);
        assert_eq!(negative.canonical().to_bits(), 0x7fc0_0000);
        assert_eq!(payload.canonical().to_bits(), 0x7fc0_0000);
        assert_eq!(
            f64::from_bits(0xfff8_0000_0000_0001).canonical().to_bits(),
            0x7ff8_0000_0000_0000
        );
        for v in [
            0.0f32,
            -0.0,
            1.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ] {
            assert_eq!(v.canonical().to_bits(), v.to_bits());
        }
        assert_eq!(
            Some(vec![negative, 2.0])
                .canonical()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            [0x7fc0_0000, 2.0f32.to_bits()]
        );
    }
}
