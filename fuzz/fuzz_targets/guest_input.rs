//! `InputBatch::check`, the guest's authority on input shape, count,
//! finiteness and range, with the spec, shape and data all taken from the
//! fuzz bytes (layout: `medguard_fuzz::decode_input_case`). The spec
//! crosses the sandbox boundary too, so it is fuzzed as well, but only a
//! spec the guest itself accepts is used: `Classifier::load` checks the spec
//! before it reads any model byte, so loading empty bytes is the guest's own
//! spec check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medguard_fuzz::decode_input_case;
use medguard_guest_core::{Classifier, GuestError};

fuzz_target!(|data: &[u8]| {
    let Some((spec, batch)) = decode_input_case(data) else {
        return;
    };
    if let Err(GuestError::InvalidModel(why)) = Classifier::load(&[], spec.clone())
        && why.starts_with("model spec")
    {
        return;
    }
    let _ = batch.check(&spec);
});
