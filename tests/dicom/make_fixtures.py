"""Make the DICOM test radiographs in tests/dicom/fixtures/ (committed).

Real PneumoniaMNIST images from the bundled samples, wrapped as DX chest
radiographs the way a modality would send them:

- same-pixels/*.dcm: the 28x28 sample PNGs as 8-bit MONOCHROME2, explicit
  VR little endian, so a DICOM and a PNG of the same pixels can be compared.
- chest-<syntax>.dcm: one sample upsampled 8x (nearest) to 224x280 (taller
  than wide, so the centre-square crop matters), stored as 12-bit
  MONOCHROME1 with a window, in every transfer syntax medguard decodes.
  Centre-cropped and area-resized back to 28x28, it is the sample again, up
  to the 12-bit quantisation and the window.
- chest-jpeg-baseline.dcm: the same as 8-bit MONOCHROME2 JPEG baseline (lossy).
- refused-*.dcm: what must not get a verdict: an MR slice, a lateral view, a
  missing Body Part Examined, JPEG-LS and JPEG 2000 encodings.

The patient identity is synthetic and distinctive, so tests can look for
its bytes in medguard's data dir. Run with the pinned tools:

    python3 -m venv /tmp/dicom-venv
    /tmp/dicom-venv/bin/pip install -r tests/dicom/requirements.txt
    /tmp/dicom-venv/bin/python tests/dicom/make_fixtures.py
"""

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "models" / "pneumonia"
OUT = Path(__file__).resolve().parent / "fixtures"

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
# Deterministic UIDs under 2.25 (UUID-derived root), one per fixture.
UID_ROOT = "2.25.31415926535897932384626433832795"

# Synthetic identity. Tests search medguard's data dir for these bytes.
PATIENT = {
    "PatientName": "Testpatient^Jane^MGPHI",
    "PatientID": "MGPHI-7731",
    "PatientBirthDate": "20190704",
    "PatientSex": "F",
    "AccessionNumber": "MGACC5521",
    "StudyID": "MGSTUDY9",
    "StudyDate": "20261201",
    "StudyTime": "101500",
    "ReferringPhysicianName": "Referrer^Rita",
}


def uid(n: int) -> str:
    return f"{UID_ROOT}.{n}"


def gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def dataset(n: int, pixels: np.ndarray, bits_stored: int, photometric: str, **attrs) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = attrs.pop("SOPClassUID", DX_FOR_PRESENTATION)
    ds.SOPInstanceUID = uid(1000 + n)
    ds.StudyInstanceUID = uid(1)
    ds.SeriesInstanceUID = uid(100 + n)
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    ds.Modality = attrs.pop("Modality", "DX")
    ds.SeriesNumber = n
    ds.InstanceNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    if attrs.get("BodyPartExamined", "CHEST") is not None:
        ds.BodyPartExamined = attrs.pop("BodyPartExamined", "CHEST")
    else:
        attrs.pop("BodyPartExamined")
    ds.ViewPosition = attrs.pop("ViewPosition", "PA")
    ds.PatientOrientation = ["P", "F"] if ds.Modality != "MR" else ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, name: str, syntax: UID, encoded_frame: bytes | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    # Compressing starts from an uncompressed dataset.
    meta.TransferSyntaxUID = syntax if syntax not in (RLELossless, JPEGLSLossless) else ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid(9)
    ds.file_meta = meta
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    elif syntax == JPEGLSLossless:
        ds.compress(JPEGLSLossless, generate_instance_uid=False)
    elif encoded_frame is not None:
        ds.PixelData = encapsulate([encoded_frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == JPEGBaseline8Bit:
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = "ISO_10918_1"
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


def main() -> None:
    # 1. The same pixels as the PNGs.
    for n, png in enumerate(
        ["samples/normal-1.png", "samples/pneumonia-1.png", "adversarial/pgd8-1.png"], start=1
    ):
        ds = dataset(n, gray(SAMPLES / png), 8, "MONOCHROME2")
        save(ds, f"same-pixels/{Path(png).stem}.dcm", ExplicitVRLittleEndian)

    # 2. A realistic-size 12-bit MONOCHROME1 radiograph in every supported syntax.
    small = gray(SAMPLES / "samples/pneumonia-2.png")
    big = np.kron(small, np.ones((8, 8), dtype=np.uint8))  # 224x224
    pad = np.full((28, 224), 0, dtype=np.uint8)  # 28 rows above and below: 280x224
    tall = np.vstack([pad, big, pad])
    stored = ((255 - tall.astype(np.uint16)) * 16).astype(np.uint16)  # MONOCHROME1, 12 bits
    window = {"WindowCenter": 2047.5, "WindowWidth": 4096, "RescaleSlope": 1, "RescaleIntercept": 0,
              "RescaleType": "US"}
    syntaxes = [
        ("implicit-le", ImplicitVRLittleEndian, None),
        ("explicit-le", ExplicitVRLittleEndian, None),
        ("deflated", DeflatedExplicitVRLittleEndian, None),
        ("rle", RLELossless, None),
        ("jpeg-lossless", JPEGLosslessSV1,
         # Process 14, first-order prediction (predictor 1): Selection Value 1.
         imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=12)),
    ]
    for i, (name, syntax, frame) in enumerate(syntaxes):
        ds = dataset(10 + i, stored, 12, "MONOCHROME1", **window)
        save(ds, f"chest-{name}.dcm", syntax, frame)
    ds = dataset(20, tall, 8, "MONOCHROME2")
    jpeg = imagecodecs.jpeg8_encode(tall, level=95)
    save(ds, "chest-jpeg-baseline.dcm", JPEGBaseline8Bit, jpeg)

    # 3. What must be refused.
    ds = dataset(30, tall, 8, "MONOCHROME2", SOPClassUID=MR_IMAGE, Modality="MR",
                 BodyPartExamined="BRAIN", ViewPosition="")
    save(ds, "refused-mr.dcm", ExplicitVRLittleEndian)
    ds = dataset(31, tall, 8, "MONOCHROME2", ViewPosition="LL")
    save(ds, "refused-lateral.dcm", ExplicitVRLittleEndian)
    ds = dataset(32, tall, 8, "MONOCHROME2", BodyPartExamined=None)
    save(ds, "refused-no-body-part.dcm", ExplicitVRLittleEndian)
    ds = dataset(33, stored, 12, "MONOCHROME1", **window)
    save(ds, "refused-jpeg-ls.dcm", JPEGLSLossless)
    ds = dataset(34, stored, 12, "MONOCHROME1", **window)
    save(ds, "refused-jpeg2000.dcm", JPEG2000Lossless,
         imagecodecs.jpeg2k_encode(stored, level=0, codecformat="J2K", reversible=True, bitspersample=12))


if __name__ == "__main__":
    main()
