"""Read medguard's structured reports back with highdicom, the way a
consumer of IHE AI Results would, and print what they say as one JSON object
per file (the Rust tests compare it with medguard's own answer).

    python read_sr.py REPORT.dcm...
"""

import json
import sys

import highdicom as hd
import pydicom


def code(c):
    return None if c is None else [c.value, c.scheme_designator, c.meaning]


def main() -> None:
    for path in sys.argv[1:]:
        ds = pydicom.dcmread(path)
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == 1, f"{path}: {len(groups)} image measurement groups"
        group = groups[0]
        evaluations = {q.name.value: code(q.value) for q in group.get_qualitative_evaluations()}
        measurements = {m.name.value: float(m.value) for m in group.get_measurements()}
        texts = {}
        for item in group[0].ContentSequence:
            if item.ValueType == "TEXT":
                name = item.ConceptNameCodeSequence[0].CodeValue
                texts.setdefault(name, []).append(item.TextValue)
        equipment = ds.ContributingEquipmentSequence[0]
        print(json.dumps({
            "file": path,
            "sop_class_uid": ds.SOPClassUID,
            "patient_id": ds.PatientID,
            "patient_name": str(ds.PatientName),
            "study_instance_uid": ds.StudyInstanceUID,
            "accession_number": ds.AccessionNumber,
            "template": ds.ContentTemplateSequence[0].TemplateIdentifier,
            "source_sop_instance_uid": group.source_images[0].referenced_sop_instance_uid,
            "evidence_sop_instance_uid": ds.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
            "finding": code(group.finding_type),
            "evaluations": evaluations,
            "measurements": measurements,
            "texts": texts,
            "purpose_of_reference": code(hd.sr.CodedConcept.from_dataset(
                equipment.PurposeOfReferenceCodeSequence[0])),
            "device_uid": equipment.DeviceUID,
        }))


if __name__ == "__main__":
    main()
