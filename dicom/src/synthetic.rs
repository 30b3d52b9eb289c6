//! Uncompressed DX chest radiographs made from pixels, for benchmarks,
//! tests and demos that need DICOM of a given size without a file.

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::SourceIdentity;

/// A DX For Presentation image, MONOCHROME2, chest PA, explicit VR little
/// endian: 8 bits allocated when `bits_stored <= 8`, else 16. `pixels` are
/// row-major, `rows * columns` of them.
///
/// # Panics
///
/// If `pixels` has the wrong length, `bits_stored` is 0 or over 16, or an
/// identity UID is not valid: this is for test data, not for input.
pub fn radiograph(
    rows: u16,
    columns: u16,
    bits_stored: u16,
    pixels: &[u16],
    identity: &SourceIdentity,
) -> Vec<u8> {
    assert_eq!(pixels.len(), usize::from(rows) * usize::from(columns));
    assert!((1..=16).contains(&bits_stored));
    let eight = bits_stored <= 8;
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let us = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    let data = if eight {
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(pixels.iter().map(|&p| p as u8).collect::<Vec<u8>>()),
        )
    } else {
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.iter().copied().collect()),
        )
    };
    let i = identity;
    let object = InMemDicomObject::from_element_iter([
        text(tags::SOP_CLASS_UID, VR::UI, &i.sop_class_uid),
        text(tags::SOP_INSTANCE_UID, VR::UI, &i.sop_instance_uid),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &i.study_instance_uid),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &i.series_instance_uid),
        text(tags::PATIENT_NAME, VR::PN, &i.patient_name),
        text(tags::PATIENT_ID, VR::LO, &i.patient_id),
        text(tags::MODALITY, VR::CS, "DX"),
        text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        text(tags::VIEW_POSITION, VR::CS, "PA"),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, rows),
        us(tags::COLUMNS, columns),
        us(tags::BITS_ALLOCATED, if eight { 8 } else { 16 }),
        us(tags::BITS_STORED, bits_stored),
        us(tags::HIGH_BIT, bits_stored - 1),
        us(tags::PIXEL_REPRESENTATION, 0),
        data,
    ]);
    let file = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .expect("a valid file meta group");
    let mut out = Vec::new();
    file.write_all(&mut out).expect("writes to memory");
    out
}
