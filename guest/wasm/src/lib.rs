//! The sandboxed guest: a thin adapter from the WIT world to the guest core.
//!
//! It holds at most one loaded model per instance. The host gives every
//! request a fresh instance, so nothing of one input outlives its request.

#![allow(unsafe_code)] // wit-bindgen's generated export glue needs it.

use std::cell::RefCell;

use medguard_guest_core::{
    Canonical, Classifier, Detector, GuestError, InputBatch, ModelSpec, ScreenOptions,
    ScreenedImage, SmoothOptions,
};
use medguard_screen as screen;

#[allow(missing_docs)] // Generated from the WIT file, which carries the docs.
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "sandboxed-classifier",
    });
}

use bindings::exports::medguard::guest::classifier as wit;
use bindings::exports::medguard::guest::dicom as wit_dicom;

thread_local! {
    // wasm32 without threads: one instance, one thread, one model.
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

struct Loaded {
    classifier: Classifier,
    detector: Option<Detector>,
}

fn with_loaded<T>(
    f: impl FnOnce(&Loaded) -> Result<T, wit::GuestError>,
) -> Result<T, wit::GuestError> {
    LOADED.with(|slot| f(slot.borrow().as_ref().ok_or(wit::GuestError::NotLoaded)?))
}

struct Guest;

impl wit::Guest for Guest {
    fn load(
        model: Vec<u8>,
        spec: wit::ModelSpec,
        detector: Option<wit::Detector>,
        interval_bounds: bool,
    ) -> Result<(), wit::GuestError> {
        let classifier = if interval_bounds {
            Classifier::load_with_bounds(&model, spec.into())
        } else {
            Classifier::load(&model, spec.into())
        }
        .map_err(to_wit)?;
        let detector = detector.map(Detector::from);
        if let Some(d) = &detector {
            classifier.check_detector(d).map_err(to_wit)?;
        }
        LOADED.with(|slot| {
            *slot.borrow_mut() = Some(Loaded {
                classifier,
                detector,
            })
        });
        Ok(())
    }

    fn classify(shape: Vec<u32>, data: Vec<f32>) -> Result<Vec<f32>, wit::GuestError> {
        with_loaded(|loaded| {
            let probabilities = loaded
                .classifier
                .classify(&InputBatch { shape, data })
                .map_err(to_wit)?;
            Ok(probabilities
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .canonical())
        })
    }

    fn smooth(
        shape: Vec<u32>,
        data: Vec<f32>,
        options: wit::SmoothOptions,
    ) -> Result<Vec<Vec<u32>>, wit::GuestError> {
        with_loaded(|loaded| {
            let options = SmoothOptions {
                sigma: options.sigma,
                samples: options.samples,
                seed: options.seed,
                first_stream: options.first_stream,
            };
            loaded
                .classifier
                .smooth(&InputBatch { shape, data }, options)
                .map_err(to_wit)
        })
    }

    fn bound(
        shape: Vec<u32>,
        data: Vec<f32>,
        radii: Vec<f32>,
    ) -> Result<Vec<Vec<wit::LogitBounds>>, wit::GuestError> {
        with_loaded(|loaded| {
            let bounds = loaded
                .classifier
                .bound(&InputBatch { shape, data }, &radii)
                .map_err(to_wit)?;
            Ok(bounds
                .into_iter()
                .map(|image| {
                    image
                        .into_iter()
                        .map(|b| wit::LogitBounds {
                            lower: b.lower.canonical(),
                            upper: b.upper.canonical(),
                            scale: b.scale.canonical(),
                        })
                        .collect()
                })
                .collect())
        })
    }

    fn screen(
        shape: Vec<u32>,
        data: Vec<f32>,
        options: wit::ScreenOptions,
    ) -> Result<Vec<wit::ScreenedImage>, wit::GuestError> {
        with_loaded(|loaded| {
            let detector = loaded.detector.as_ref().ok_or_else(|| {
                wit::GuestError::InvalidInput("the model was loaded without a detector".into())
            })?;
            let options = ScreenOptions {
                seed: options.seed,
                source_bits: options.source_bits,
                withhold_rejected: options.withhold_rejected,
            };
            let screened = loaded
                .classifier
                .screen(&InputBatch { shape, data }, detector, options)
                .map_err(to_wit)?;
            Ok(screened.into_iter().map(Into::into).collect())
        })
    }
}

impl From<wit::Statistic> for screen::Statistic {
    fn from(s: wit::Statistic) -> Self {
        match s {
            wit::Statistic::Margin => screen::Statistic::Margin,
            wit::Statistic::SqueezeMedian(window) => screen::Statistic::SqueezeMedian { window },
            wit::Statistic::NoiseResponse(n) => screen::Statistic::NoiseResponse {
                sigma: n.sigma,
                draws: n.draws,
            },
        }
    }
}

impl From<wit::Detector> for Detector {
    fn from(d: wit::Detector) -> Self {
        let statistics = d.statistics.into_iter().map(Into::into).collect();
        match d.calibration {
            None => Detector::Uncalibrated(statistics),
            Some(c) => Detector::Calibrated(screen::Profile {
                statistics,
                classes: c
                    .classes
                    .into_iter()
                    .map(|r| screen::ClassReference {
                        reference: r.reference,
                    })
                    .collect(),
                thresholds: screen::Thresholds {
                    flag: c.flag_at,
                    reject: c.reject_at,
                },
                targets: screen::Targets {
                    flag_fpr: c.flag_target,
                    reject_fpr: c.reject_target,
                },
            }),
        }
    }
}

impl From<ScreenedImage> for wit::ScreenedImage {
    fn from(s: ScreenedImage) -> Self {
        wit::ScreenedImage {
            probabilities: s.probabilities.canonical(),
            logits: s.logits.canonical(),
            statistics: s.statistics.canonical(),
            screening: s.screening.map(|s| wit::Screening {
                verdict: match s.verdict {
                    screen::Verdict::Accept => wit::Verdict::Accept,
                    screen::Verdict::Flag => wit::Verdict::Flag,
                    screen::Verdict::Reject => wit::Verdict::Reject,
                },
                p_value: s.p_value.canonical(),
                statistics: s
                    .statistics
                    .into_iter()
                    .map(|r| wit::StatisticReport {
                        value: r.value.canonical(),
                        p_value: r.p_value.canonical(),
                    })
                    .collect(),
            }),
            off_grid: s.off_grid,
        }
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

impl wit_dicom::Guest for Guest {
    fn decode(
        file: Vec<u8>,
        profile: wit_dicom::Profile,
    ) -> Result<wit_dicom::Radiograph, wit_dicom::DicomError> {
        use medguard_dicom as d;
        let (height, width) = (profile.height, profile.width);
        let accepts = d::Acceptance {
            modality: profile.accepts.modality,
            photometric_interpretation: profile.accepts.photometric_interpretation,
            body_part_examined: profile.accepts.body_part_examined,
            view_position: profile.accepts.view_position,
        };
        let preprocessing = d::Preprocessing {
            intensity: match profile.intensity {
                wit_dicom::Intensity::VoiElseStoredRange => d::Intensity::VoiElseStoredRange,
            },
            crop: match profile.crop {
                wit_dicom::Crop::None => d::Crop::None,
                wit_dicom::Crop::CenterSquare => d::Crop::CenterSquare,
            },
            resize: match profile.resize {
                wit_dicom::Resize::Area => d::Resize::Area,
            },
        };
        // The file is dropped as soon as it is decoded: the instance holds
        // the pixels and the copy of the header only until it returns.
        let radiograph =
            d::decode(&file, &accepts, &preprocessing, height, width).map_err(|e| match e {
                d::DicomError::NotDicom(m) => wit_dicom::DicomError::NotDicom(m),
                d::DicomError::UnsupportedTransferSyntax { uid, name } => {
                    wit_dicom::DicomError::UnsupportedTransferSyntax(wit_dicom::TransferSyntax {
                        uid,
                        name,
                    })
                }
                d::DicomError::NotAccepted(m) => wit_dicom::DicomError::NotAccepted(m),
                d::DicomError::Malformed(m) => wit_dicom::DicomError::Malformed(m),
                d::DicomError::Unsupported(m) => wit_dicom::DicomError::Unsupported(m),
            })?;
        let (s, i) = (radiograph.source, radiograph.identity);
        Ok(wit_dicom::Radiograph {
            pixels: radiograph.pixels.canonical(),
            height: radiograph.height,
            width: radiograph.width,
            source: wit_dicom::SourceImage {
                rows: s.rows,
                columns: s.columns,
                bits_stored: s.bits_stored,
                transfer_syntax: s.transfer_syntax,
                modality: s.modality,
                photometric_interpretation: s.photometric_interpretation,
                body_part_examined: s.body_part_examined,
                view_position: s.view_position,
                intensity: s.intensity,
            },
            identity: wit_dicom::SourceIdentity {
                sop_class_uid: i.sop_class_uid,
                sop_instance_uid: i.sop_instance_uid,
                study_instance_uid: i.study_instance_uid,
                series_instance_uid: i.series_instance_uid,
                patient_name: i.patient_name,
                patient_id: i.patient_id,
                patient_birth_date: i.patient_birth_date,
                patient_sex: i.patient_sex,
                study_date: i.study_date,
                study_time: i.study_time,
                study_id: i.study_id,
                accession_number: i.accession_number,
                referring_physician_name: i.referring_physician_name,
            },
        })
    }
}

bindings::export!(Guest with_types_in bindings);
