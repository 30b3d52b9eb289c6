//! The sandboxed guest: a thin adapter from the WIT world to the guest core.
//!
//! It holds at most one loaded model per instance. The host gives every
//! request a fresh instance, so nothing of one input outlives its request.

#![allow(unsafe_code)] // wit-bindgen's generated export glue needs it.

use std::cell::RefCell;

use medguard_guest_core::{Classifier, GuestError, InputBatch, ModelSpec};

#[allow(missing_docs)] // Generated from the WIT file, which carries the docs.
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "sandboxed-classifier",
    });
}

use bindings::exports::medguard::guest::classifier as wit;

thread_local! {
    // wasm32 without threads: one instance, one thread, one model.
    static LOADED: RefCell<Option<Classifier>> = const { RefCell::new(None) };
}

struct Guest;

impl wit::Guest for Guest {
    fn load(model: Vec<u8>, spec: wit::ModelSpec) -> Result<(), wit::GuestError> {
        let classifier = Classifier::load(&model, spec.into()).map_err(to_wit)?;
        LOADED.with(|slot| *slot.borrow_mut() = Some(classifier));
        Ok(())
    }

    fn classify(shape: Vec<u32>, data: Vec<f32>) -> Result<Vec<f32>, wit::GuestError> {
        LOADED.with(|slot| {
            let slot = slot.borrow();
            let classifier = slot.as_ref().ok_or(wit::GuestError::NotLoaded)?;
            let probabilities = classifier
                .classify(&InputBatch { shape, data })
                .map_err(to_wit)?;
            Ok(probabilities.into_iter().flatten().collect())
        })
    }
}

impl From<wit::ModelSpec> for ModelSpec {
    fn from(s: wit::ModelSpec) -> Self {
        ModelSpec {
            input_name: s.input_name,
            output_name: s.output_name,
            channels: s.channels,
            height: s.height,
            width: s.width,
            min_value: s.min_value,
            max_value: s.max_value,
            classes: s.classes,
            max_batch: s.max_batch,
        }
    }
}

fn to_wit(e: GuestError) -> wit::GuestError {
    match e {
        GuestError::InvalidModel(m) => wit::GuestError::InvalidModel(m),
        GuestError::InvalidInput(m) => wit::GuestError::InvalidInput(m),
        GuestError::InferenceFailed(m) => wit::GuestError::InferenceFailed(m),
        GuestError::NotLoaded => wit::GuestError::NotLoaded,
    }
}

bindings::export!(Guest with_types_in bindings);
