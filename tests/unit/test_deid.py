"""De-identification: the Annex E profile table, pseudonyms, determinism, PNG/JPEG metadata stripping."""

from __future__ import annotations

import copy
import io
import os
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from chexstack import deid
from chexstack.blobstore import BlobStore

KEY = b"unit-test-key"
SOP_UID = "1.2.826.0.1.3680043.8.498.1001"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1002"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1003"


def _dummy_value(vr: str) -> object:
    return {
        "DA": "20240102",
        "TM": "101112",
        "DT": "20240102101112",
        "PN": "DOE^JANE",
        "AS": "042Y",
        "IS": "7",
        "DS": "1.5",
        "US": 3,
        "SS": 3,
        "UL": 3,
        "SL": 3,
        "FL": 1.0,
        "FD": 1.0,
        "UI": "1.2.3.4.5",
        "UR": "https://example.org/DOE",
        "CS": "SECRET",
        "OB": b"\x01\x02",
        "SQ": Sequence([Dataset()]),
    }.get(vr, "SECRET DOE JANE")


def make_dataset(**extra: object) -> Dataset:
    """A small DX image with PHI everywhere the profile looks, plus a private tag and nested sequences."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = SOP_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.Modality = "DX"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN-12345"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.PatientAddress = "1 Main St"
    ds.PatientTelephoneNumbers = "555-0100"
    ds.OtherPatientIDs = "OTHER-1"
    ds.EthnicGroup = "X"
    ds.PatientComments = "comment"
    ds.InstitutionName = "General Hospital"
    ds.InstitutionAddress = "2 Main St"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.PerformingPhysicianName = "PERF^DOC"
    ds.NameOfPhysiciansReadingStudy = "READ^DOC"
    ds.OperatorsName = "OPER^ATOR"
    ds.AccessionNumber = "ACC-999"
    ds.StudyID = "S-42"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.SeriesDate = "20240102"
    ds.AcquisitionDate = "20240102"
    ds.ContentDate = "20240102"
    ds.DeviceSerialNumber = "SN-1"
    ds.StationName = "STATION-1"
    ds.StudyDescription = "Chest for DOE"
    ds.ImageComments = "free text"
    ds.BodyPartExamined = "CHEST"
    ref_patient = Dataset()
    ref_patient.PatientName = "DOE^JANE"
    ref_patient.PatientID = "MRN-12345"
    ds.ReferencedPatientSequence = [ref_patient]
    other = Dataset()
    other.PatientID = "MRN-12345"
    ds.OtherPatientIDsSequence = [other]
    request = Dataset()
    request.RequestedProcedureID = "RP-1"
    request.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = [request]
    # A sequence the profile keeps: its items must still be scrubbed, and its UIDs remapped.
    ref_image = Dataset()
    ref_image.ReferencedSOPClassUID = DigitalXRayImageStorageForPresentation
    ref_image.ReferencedSOPInstanceUID = SOP_UID
    ref_image.PatientName = "DOE^JANE"
    ref_image.add_new(0x00091010, "LO", "private in a nested item")
    ds.ReferencedImageSequence = [ref_image]
    ds.add_new(0x00091001, "LO", "DOE^JANE private")
    ds.add_new(0x00091010, "LO", "private creator")
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(16))
    for name, value in extra.items():
        setattr(ds, name, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def roundtrip(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def all_elements(ds: Dataset) -> list[pydicom.DataElement]:
    return list(ds.iterall())


# --- the table ------------------------------------------------------------------------------------


def test_table_keywords_match_the_dicom_dictionary() -> None:
    for tag, keyword in deid.PROFILE_KEYWORDS.items():
        assert keyword_for_tag(tag) == keyword, f"{tag:08X}"
    assert len(deid.PROFILE) >= 80
    assert set(deid.PROFILE.values()) <= {"X", "Z", "D", "U", "K"}


@pytest.mark.parametrize("tag", sorted(deid.PROFILE))
def test_every_table_attribute_is_acted_on(tag: int) -> None:
    action = deid.PROFILE[tag]
    vr = dictionary_VR(tag).split(" or ")[0]
    ds = make_dataset()
    ds.add_new(tag, vr, _dummy_value(vr))
    original = ds[tag].value
    deid.deidentify(ds, KEY)
    if tag == 0x00100010:  # PatientName/PatientID become the pseudonym of the PatientID
        assert str(ds[tag].value) == deid.pseudonym(KEY, "MRN-12345")
    elif tag == 0x00100020:
        assert ds[tag].value == deid.pseudonym(KEY, str(original))
    elif action == "X":
        assert tag not in ds
    elif action == "Z":
        assert ds[tag].value in (None, "", [], b"") or len(ds[tag].value) == 0
    elif action == "D":
        assert ds[tag].value != original
    elif action == "U":
        assert str(ds[tag].value) == deid.replacement_uid(KEY, "1.2.3.4.5")


# PS3.15 Annex E, Table E.1-1 (DICOM 2024b), the Basic Profile column, typed here from the standard
# (not from deid.PROFILE) for the attributes an X-ray most often carries. chexstack applies the Basic
# Profile with none of its options: no Retain UIDs (UIDs are replaced), no Retain Longitudinal
# Temporal Information (dates and times go), no Retain Device Identity, Institution Identity or
# Patient Characteristics, no Clean Descriptors, Structured Content or Graphics (removed, not
# cleaned), no Retain Safe Private (every private tag goes) and no Clean Pixel Data (an image that
# says it has burned-in annotation is refused). Hence the one code, 113100, that
# test_de_identification_markers finds in DeidentificationMethodCodeSequence.
STANDARD_BASIC_PROFILE: tuple[tuple[int, str, str], ...] = (
    # Patient identity and characteristics
    (0x00100010, "PatientName", "Z"),
    (0x00100020, "PatientID", "Z/D"),
    (0x00100021, "IssuerOfPatientID", "X"),
    (0x00100030, "PatientBirthDate", "Z"),
    (0x00100032, "PatientBirthTime", "X"),
    (0x00100040, "PatientSex", "Z"),
    (0x00101000, "OtherPatientIDs", "X"),
    (0x00101001, "OtherPatientNames", "X"),
    (0x00101002, "OtherPatientIDsSequence", "X"),
    (0x00101005, "PatientBirthName", "X"),
    (0x00101010, "PatientAge", "X"),
    (0x00101020, "PatientSize", "X"),
    (0x00101030, "PatientWeight", "X"),
    (0x00101040, "PatientAddress", "X"),
    (0x00101060, "PatientMotherBirthName", "X"),
    (0x00101090, "MedicalRecordLocator", "X"),
    (0x00102154, "PatientTelephoneNumbers", "X"),
    (0x00102155, "PatientTelecomInformation", "X"),
    (0x00102160, "EthnicGroup", "X"),
    (0x00102180, "Occupation", "X"),
    (0x00101080, "MilitaryRank", "X"),
    (0x00101081, "BranchOfService", "X"),
    (0x00102150, "CountryOfResidence", "X"),
    (0x00102152, "RegionOfResidence", "X"),
    (0x001021F0, "PatientReligiousPreference", "X"),
    (0x00102203, "PatientSexNeutered", "X/Z"),
    (0x001021C0, "PregnancyStatus", "X"),
    (0x001021D0, "LastMenstrualDate", "X"),
    (0x001021A0, "SmokingStatus", "X"),
    (0x00102000, "MedicalAlerts", "X"),
    (0x00102110, "Allergies", "X"),
    (0x001021B0, "AdditionalPatientHistory", "X"),
    (0x00104000, "PatientComments", "X"),
    (0x00102297, "ResponsiblePerson", "X"),
    (0x00081120, "ReferencedPatientSequence", "X"),
    (0x00380004, "ReferencedPatientAliasSequence", "X"),
    (0x00101100, "ReferencedPatientPhotoSequence", "X"),
    (0x00100050, "PatientInsurancePlanCodeSequence", "X"),
    # Visit and admission
    (0x00380010, "AdmissionID", "X"),
    (0x00380011, "IssuerOfAdmissionID", "X"),
    (0x00380020, "AdmittingDate", "X"),
    (0x00380021, "AdmittingTime", "X"),
    (0x00380030, "DischargeDate", "X"),
    (0x00380300, "CurrentPatientLocation", "X"),
    (0x00380400, "PatientInstitutionResidence", "X"),
    (0x00384000, "VisitComments", "X"),
    # Dates and times
    (0x00080020, "StudyDate", "Z"),
    (0x00080030, "StudyTime", "Z"),
    (0x00080021, "SeriesDate", "X/D"),
    (0x00080031, "SeriesTime", "X/D"),
    (0x00080022, "AcquisitionDate", "X/Z"),
    (0x00080032, "AcquisitionTime", "X/Z"),
    (0x0008002A, "AcquisitionDateTime", "X/Z/D"),
    (0x00080023, "ContentDate", "Z/D"),
    (0x00080033, "ContentTime", "Z/D"),
    (0x00080012, "InstanceCreationDate", "X/D"),
    (0x00080013, "InstanceCreationTime", "X/Z/D"),
    (0x00080024, "OverlayDate", "X"),
    (0x00080025, "CurveDate", "X"),
    (0x00080201, "TimezoneOffsetFromUTC", "X"),
    (0x00181200, "DateOfLastCalibration", "X"),
    (0x00181201, "TimeOfLastCalibration", "X"),
    (0x00181012, "DateOfSecondaryCapture", "X"),
    (0x00181014, "TimeOfSecondaryCapture", "X"),
    (0x00321040, "StudyArrivalDate", "X"),
    (0x00321041, "StudyArrivalTime", "X"),
    (0x00321050, "StudyCompletionDate", "X"),
    (0x00400002, "ScheduledProcedureStepStartDate", "X"),
    (0x00400244, "PerformedProcedureStepStartDate", "X"),
    (0x00400245, "PerformedProcedureStepStartTime", "X"),
    (0x00402004, "IssueDateOfImagingServiceRequest", "X"),
    # UIDs
    (0x00080018, "SOPInstanceUID", "U"),
    (0x0020000D, "StudyInstanceUID", "U"),
    (0x0020000E, "SeriesInstanceUID", "U"),
    (0x00200052, "FrameOfReferenceUID", "U"),
    (0x00020003, "MediaStorageSOPInstanceUID", "U"),
    (0x00080014, "InstanceCreatorUID", "U"),
    (0x00081155, "ReferencedSOPInstanceUID", "U"),
    (0x00083010, "IrradiationEventUID", "U"),
    (0x00080017, "AcquisitionUID", "U"),
    (0x00181002, "DeviceUID", "U"),
    (0x00209161, "ConcatenationUID", "U"),
    (0x00209164, "DimensionOrganizationUID", "U"),
    (0x00200200, "SynchronizationFrameOfReferenceUID", "U"),
    (0x00880140, "StorageMediaFileSetUID", "U"),
    (0x00081195, "TransactionUID", "U"),
    (0x0040A124, "UID", "U"),
    (0x0040A171, "ObservationUID", "U"),
    (0x00080058, "FailedSOPInstanceUIDList", "U"),
    (0x04000100, "DigitalSignatureUID", "U"),
    (0x00081140, "ReferencedImageSequence", "X/Z/U*"),
    (0x00082112, "SourceImageSequence", "X/Z/U*"),
    # Institution, physicians, operators and stations
    (0x00080080, "InstitutionName", "X/Z/D"),
    (0x00080081, "InstitutionAddress", "X"),
    (0x00080082, "InstitutionCodeSequence", "X/Z/D"),
    (0x00081040, "InstitutionalDepartmentName", "X"),
    (0x00080090, "ReferringPhysicianName", "Z"),
    (0x00080092, "ReferringPhysicianAddress", "X"),
    (0x00080094, "ReferringPhysicianTelephoneNumbers", "X"),
    (0x00080096, "ReferringPhysicianIdentificationSequence", "X"),
    (0x0008009C, "ConsultingPhysicianName", "Z"),
    (0x00081048, "PhysiciansOfRecord", "X"),
    (0x00081050, "PerformingPhysicianName", "X"),
    (0x00081060, "NameOfPhysiciansReadingStudy", "X"),
    (0x00081070, "OperatorsName", "X/Z/D"),
    (0x00081072, "OperatorIdentificationSequence", "X/D"),
    (0x00321032, "RequestingPhysician", "X"),
    (0x00400006, "ScheduledPerformingPhysicianName", "X"),
    (0x00404037, "HumanPerformerName", "X"),
    (0x00402008, "OrderEnteredBy", "X"),
    (0x00700084, "ContentCreatorName", "Z/D"),
    (0x0040A075, "VerifyingObserverName", "D"),
    (0x0040A027, "VerifyingOrganization", "D"),
    (0x0040A123, "PersonName", "D"),
    (0x00081010, "StationName", "X/Z/D"),
    (0x00080055, "StationAETitle", "X"),
    (0x00080054, "RetrieveAETitle", "X"),
    (0x00081000, "NetworkID", "X"),
    # Accession numbers and other identifiers
    (0x00080050, "AccessionNumber", "Z"),
    (0x00200010, "StudyID", "Z"),
    (0x00320012, "StudyIDIssuer", "X"),
    (0x00401001, "RequestedProcedureID", "X"),
    (0x00400009, "ScheduledProcedureStepID", "X"),
    (0x00400253, "PerformedProcedureStepID", "X"),
    (0x00402016, "PlacerOrderNumberImagingServiceRequest", "Z"),
    (0x00402017, "FillerOrderNumberImagingServiceRequest", "Z"),
    (0x00120010, "ClinicalTrialSponsorName", "D"),
    (0x00120040, "ClinicalTrialSubjectID", "D"),
    # Devices
    (0x00181000, "DeviceSerialNumber", "X/Z/D"),
    (0x00181004, "PlateID", "X"),
    (0x00181007, "CassetteID", "X"),
    (0x00181005, "GeneratorID", "X"),
    (0x00181008, "GantryID", "X"),
    (0x0018700A, "DetectorID", "X/D"),
    (0x00181009, "UniqueDeviceIdentifier", "X"),
    (0x00189371, "XRayDetectorID", "D"),
    (0x00500020, "DeviceDescription", "X"),
    # Descriptions and free-text comments
    (0x00081030, "StudyDescription", "X"),
    (0x0008103E, "SeriesDescription", "X"),
    (0x00181030, "ProtocolName", "X/D"),
    (0x00204000, "ImageComments", "X"),
    (0x00184000, "AcquisitionComments", "X"),
    (0x00082111, "DerivationDescription", "X"),
    (0x00321060, "RequestedProcedureDescription", "X/Z"),
    (0x00400007, "ScheduledProcedureStepDescription", "X"),
    (0x00400254, "PerformedProcedureStepDescription", "X"),
    (0x00321030, "ReasonForStudy", "X"),
    (0x00324000, "StudyComments", "X"),
    (0x00401400, "RequestedProcedureComments", "X"),
    (0x00402400, "ImagingServiceRequestComments", "X"),
    (0x00400280, "CommentsOnThePerformedProcedureStep", "X"),
    (0x00084000, "IdentifyingComments", "X"),
    (0x00209158, "FrameComments", "X"),
    (0x00284000, "ImagePresentationComments", "X"),
    (0x00081080, "AdmittingDiagnosesDescription", "X"),
    (0x00180010, "ContrastBolusAgent", "Z/D"),
    (0x40004000, "TextComments", "X"),
    (0x4008010B, "InterpretationText", "X"),
    (0x40080300, "Impressions", "X"),
    (0x40084000, "ResultsComments", "X"),
    # Structured content, graphics, references and signatures
    (0x0040A730, "ContentSequence", "D"),
    (0x00700001, "GraphicAnnotationSequence", "D"),
    (0x00400555, "AcquisitionContextSequence", "X/Z"),
    (0x00880200, "IconImageSequence", "X"),
    (0x00081110, "ReferencedStudySequence", "X/Z"),
    (0x00081111, "ReferencedPerformedProcedureStepSequence", "X/Z/D"),
    (0x00400275, "RequestAttributesSequence", "X"),
    (0x04000561, "OriginalAttributesSequence", "X"),
    (0x04000550, "ModifiedAttributesSequence", "X"),
    (0xFFFAFFFA, "DigitalSignaturesSequence", "X"),
    (0xFFFCFFFC, "DataSetTrailingPadding", "X"),
)

# What each Basic Profile action lets an implementation do (the table's legend): Z is a zero-length
# value or a dummy; a combined action is the first unless IOD conformance needs a later one (any of
# them is allowed here); U* keeps the sequence with the instance UIDs it holds replaced, which
# chexstack does by applying the profile to the items of a sequence it keeps (K).
PERMITTED: dict[str, set[str]] = {
    "X": {"X"},
    "Z": {"Z", "D"},
    "D": {"D"},
    "U": {"U"},
    "X/Z": {"X", "Z"},
    "X/D": {"X", "D"},
    "Z/D": {"Z", "D"},
    "X/Z/D": {"X", "Z", "D"},
    "X/Z/U*": {"X", "Z", "K"},
}
_KEYWORDS = [keyword for _, keyword, _ in STANDARD_BASIC_PROFILE]


def test_standard_table_keywords_match_the_dicom_dictionary() -> None:
    for tag, keyword, action in STANDARD_BASIC_PROFILE:
        assert keyword_for_tag(tag) == keyword, f"{tag:08X}"
        assert action in PERMITTED, f"{keyword}: {action}"
    assert len({tag for tag, _, _ in STANDARD_BASIC_PROFILE}) == len(STANDARD_BASIC_PROFILE)


@pytest.mark.parametrize(("tag", "keyword", "action"), STANDARD_BASIC_PROFILE, ids=_KEYWORDS)
def test_profile_action_is_one_the_standard_permits(tag: int, keyword: str, action: str) -> None:
    assert deid.PROFILE.get(tag, "K") in PERMITTED[action], f"{keyword}: the standard says {action}"


def _image_reference() -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = DigitalXRayImageStorageForPresentation
    item.ReferencedSOPInstanceUID = SOP_UID
    return item


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str | bytes | list) and len(value) == 0)


@pytest.mark.parametrize(("tag", "keyword", "action"), STANDARD_BASIC_PROFILE, ids=_KEYWORDS)
def test_deidentified_attribute_meets_the_standard(tag: int, keyword: str, action: str) -> None:
    vr = dictionary_VR(tag).split(" or ")[0]
    ds = make_dataset()
    ds.add_new(tag, vr, Sequence([_image_reference()]) if action == "X/Z/U*" else _dummy_value(vr))
    original = copy.deepcopy(ds[tag].value)
    deid.deidentify(ds, KEY)
    gone = tag not in ds
    value = None if gone else ds[tag].value
    # The original value never survives: a blank or a dummy differs from it (PatientName and
    # PatientID hold the pseudonym, a dummy as far as the table is concerned).
    replaced = not gone and value != original
    if action == "X":
        assert gone, value
    elif action in ("Z", "D", "Z/D"):
        assert replaced, value
    elif action == "U":
        assert not gone and str(value) == deid.replacement_uid(KEY, str(original)) != str(original)
    elif action == "X/Z":
        assert gone or _blank(value), value
    elif action in ("X/D", "X/Z/D"):
        assert gone or replaced, value
    else:  # X/Z/U*: gone, empty, or kept with every referenced instance UID replaced
        assert action == "X/Z/U*"
        refs = [] if gone or _blank(value) else [item.ReferencedSOPInstanceUID for item in value or []]
        assert all(uid == deid.replacement_uid(KEY, SOP_UID) for uid in refs), refs


def test_listed_identifiers_are_gone() -> None:
    ds = make_dataset()
    pseudo = deid.deidentify(ds, KEY)
    assert pseudo == deid.pseudonym(KEY, "MRN-12345")
    for kw in (
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "AcquisitionDate",
        "ContentDate",
    ):
        assert ds[kw].value in (None, ""), kw
    for kw in (
        "PatientAge",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "EthnicGroup",
        "PatientComments",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "DeviceSerialNumber",
        "StationName",
        "SeriesDate",
        "StudyDescription",
        "ImageComments",
        "ReferencedPatientSequence",
        "OtherPatientIDsSequence",
        "RequestAttributesSequence",
    ):
        assert kw not in ds, kw
    assert ds.PatientName == pseudo and ds.PatientID == pseudo
    assert ds.BodyPartExamined == "CHEST" and ds.Modality == "DX"  # K: clinically needed, kept


def test_de_identification_markers() -> None:
    ds = make_dataset()
    deid.deidentify(ds, KEY)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod
    (code,) = ds.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113100",
        "DCM",
        "Basic Application Confidentiality Profile",
    )


def test_private_tags_removed_everywhere_and_nested_sequences_scrubbed() -> None:
    ds = make_dataset()
    deid.deidentify(ds, KEY)
    out = roundtrip(ds)
    assert not any(e.tag.is_private for e in all_elements(out))
    (item,) = out.ReferencedImageSequence
    assert item.PatientName in (None, "")
    assert item.ReferencedSOPInstanceUID == out.SOPInstanceUID  # references still resolve


def test_no_phi_left_in_the_serialised_bytes() -> None:
    ds = make_dataset()
    deid.deidentify(ds, KEY)
    data = deid.serialise(ds)
    for needle in (b"DOE", b"JANE", b"MRN-12345", b"OTHER-1", b"General Hospital", b"WHO^DOCTOR", b"ACC-999",
                   b"19700101", b"20240102", b"SN-1", b"STATION-1", b"RP-1", b"SPS-1", SOP_UID.encode(),
                   STUDY_UID.encode(), SERIES_UID.encode()):  # fmt: skip
        assert needle not in data, needle


def test_free_text_quoting_the_patient_is_blanked() -> None:
    ds = make_dataset()
    ds.ManufacturerModelName = "Model for jane"  # not in the table, so kept but for the scrub
    ds.Manufacturer = "ACME"
    ds.PixelSpacing = ["0.12345", "0.12345"]  # DS quoting digits of the ID: numbers are left alone
    item = Dataset()
    item.CodeMeaning = "MRN-12345 follow-up"
    ds.AnatomicRegionSequence = [item]
    deid.deidentify(ds, KEY)
    assert ds.ManufacturerModelName in (None, "")
    assert ds.AnatomicRegionSequence[0].CodeMeaning in (None, "")
    assert ds.Manufacturer == "ACME" and ds.BodyPartExamined == "CHEST"
    assert [float(v) for v in ds.PixelSpacing] == [0.12345, 0.12345]


def test_uids_replaced_consistently_and_deterministically() -> None:
    a, b = make_dataset(), make_dataset()
    deid.deidentify(a, KEY)
    deid.deidentify(b, KEY)
    assert a.SOPInstanceUID == b.SOPInstanceUID == deid.replacement_uid(KEY, SOP_UID)
    assert a.SOPInstanceUID != SOP_UID and a.SOPInstanceUID.startswith("2.25.")
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.StudyInstanceUID == deid.replacement_uid(KEY, STUDY_UID) != a.SeriesInstanceUID
    assert len(a.SOPInstanceUID) <= 64
    assert a.SOPClassUID == DigitalXRayImageStorageForPresentation  # class UIDs are not identifying
    c = make_dataset()
    deid.deidentify(c, b"another key")
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_same_input_gives_identical_output_bytes() -> None:
    raw = to_bytes(make_dataset())
    outs = []
    for _ in range(2):
        ds = pydicom.dcmread(io.BytesIO(raw))
        deid.deidentify(ds, KEY)
        outs.append(deid.serialise(ds))
    assert outs[0] == outs[1]
    out = pydicom.dcmread(io.BytesIO(outs[0]))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.PixelData == bytes(range(16))


def test_burned_in_annotation_is_rejected() -> None:
    with pytest.raises(deid.DeidentificationError, match="BurnedInAnnotation"):
        deid.deidentify(make_dataset(BurnedInAnnotation="YES"), KEY)
    deid.deidentify(make_dataset(BurnedInAnnotation="NO"), KEY)


def test_patient_id_override_wins_and_missing_id_gives_none() -> None:
    ds = make_dataset()
    assert deid.deidentify(ds, KEY, patient_id="OTHER") == deid.pseudonym(KEY, "OTHER") == ds.PatientID
    ds = make_dataset()
    del ds.PatientID
    assert deid.deidentify(ds, KEY) is None
    assert ds.PatientID == ""


def test_overlay_and_curve_groups_removed() -> None:
    ds = make_dataset()
    ds.add_new(0x60003000, "OB", b"\xff" * 2)
    ds.add_new(0x60004000, "LT", "overlay comment")
    ds.add_new(0x50000010, "US", 1)
    deid.deidentify(ds, KEY)
    assert not any(0x5000 <= e.tag.group <= 0x60FF for e in ds)


# --- pseudonyms and the key -----------------------------------------------------------------------


def test_pseudonym_is_keyed_stable_and_normalised() -> None:
    p = deid.pseudonym(KEY, "MRN-12345")
    assert p.startswith("p-") and len(p) == 18 and int(p[2:], 16) >= 0
    assert deid.pseudonym(KEY, " mrn-12345 ") == p
    assert deid.pseudonym(b"other key", "MRN-12345") != p
    assert deid.pseudonym(KEY, "MRN-12346") != p
    with pytest.raises(ValueError):
        deid.pseudonym(b"", "MRN-12345")


def test_key_generated_once_with_private_permissions(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    k1 = deid.load_or_create_key(store, None)
    k2 = deid.load_or_create_key(tmp_path / "blobs", None)
    assert k1 == k2 and len(k1) == 64
    key_file = tmp_path / "blobs" / deid.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in key_file.parent.iterdir()] == [deid.KEY_FILE]  # no temp file left
    assert deid.load_or_create_key(store, "configured") == b"configured"
    # The file's text works as the configured key: same pseudonyms either way.
    assert deid.load_or_create_key(store, key_file.read_text().strip()) == k1
    other = deid.load_or_create_key(BlobStore(tmp_path / "other"), None)
    assert other != k1
    os.chmod(key_file, 0o600)


# --- PNG / JPEG metadata --------------------------------------------------------------------------


def _grey(size: int = 32) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L")


def _png_with_text() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "DOE^JANE")
    info.add_text("Author", "MRN-12345", zip=True)
    info.add_itxt("Title", "DOE JANE", lang="en")
    buf = io.BytesIO()
    _grey().save(buf, format="PNG", pnginfo=info)
    return buf.getvalue() + b"trailing DOE^JANE"


def _chunks(png: bytes) -> list[bytes]:
    out, i = [], 8
    while i < len(png):
        n = int.from_bytes(png[i : i + 4], "big")
        out.append(png[i + 4 : i + 8])
        i += 12 + n
    return out


def test_png_text_chunks_removed_pixels_untouched() -> None:
    png = _png_with_text()
    assert b"DOE" in png
    out = deid.strip_png_metadata(png)
    assert b"DOE" not in out and b"JANE" not in out and b"MRN" not in out
    assert not {b"tEXt", b"zTXt", b"iTXt"} & set(_chunks(out))
    assert _chunks(out)[-1] == b"IEND"
    original = np.asarray(Image.open(io.BytesIO(png)))
    stripped = Image.open(io.BytesIO(out))
    stripped.load()  # verifies CRCs
    assert np.array_equal(np.asarray(stripped), original)


def test_png_truncated_is_refused() -> None:
    with pytest.raises(deid.DeidentificationError):
        deid.strip_png_metadata(_png_with_text()[:60])


def _jpeg_with_metadata(orientation: int | None = 6) -> bytes:
    img = _grey(48)
    exif = Image.Exif()
    exif[0x010E] = "DOE^JANE"  # ImageDescription
    exif[0x013B] = "MRN-12345"  # Artist
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), comment=b"DOE^JANE", quality=90, progressive=True)
    data = buf.getvalue()
    # An XMP APP1 and an APP13 (IPTC) segment, both of which can carry names.
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x>DOE JANE</x>"
    app13 = b"Photoshop 3.0\x00DOE"
    extra = b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp
    extra += b"\xff\xed" + (len(app13) + 2).to_bytes(2, "big") + app13
    return data[:2] + extra + data[2:] + b"after EOI DOE"


def _markers(jpeg: bytes) -> list[int]:
    out, i = [], 2
    while i < len(jpeg) and jpeg[i] == 0xFF:
        m = jpeg[i + 1]
        out.append(m)
        if m == 0xDA or m == 0xD9:
            break
        i += 2 + int.from_bytes(jpeg[i + 2 : i + 4], "big")
    return out


def test_jpeg_metadata_removed_orientation_kept_pixels_untouched() -> None:
    jpeg = _jpeg_with_metadata(orientation=6)
    assert b"DOE" in jpeg and b"MRN-12345" in jpeg
    out = deid.strip_jpeg_metadata(jpeg)
    assert b"DOE" not in out and b"JANE" not in out and b"MRN" not in out
    markers = _markers(out)
    assert 0xFE not in markers and 0xED not in markers and markers.count(0xE1) == 1
    assert out.endswith(b"\xff\xd9")
    before, after = Image.open(io.BytesIO(jpeg)), Image.open(io.BytesIO(out))
    assert after.getexif().get(0x0112) == 6
    assert dict(after.getexif()) == {0x0112: 6}
    assert np.array_equal(np.asarray(before), np.asarray(after))


def test_jpeg_without_orientation_gets_no_exif() -> None:
    out = deid.strip_jpeg_metadata(_jpeg_with_metadata(orientation=None))
    assert 0xE1 not in _markers(out)
    assert b"DOE" not in out


def test_jpeg_keeps_jfif_and_icc() -> None:
    buf = io.BytesIO()
    icc = b"\x00" * 128 + b"fake icc profile"
    _grey().convert("RGB").save(buf, format="JPEG", icc_profile=icc)
    out = deid.strip_jpeg_metadata(buf.getvalue())
    assert Image.open(io.BytesIO(out)).info.get("icc_profile") == icc
    assert 0xE0 in _markers(out)


def test_compressed_transfer_syntax_is_kept_and_pixels_untouched() -> None:
    from pydicom.uid import RLELossless

    from chexstack import synth

    pixels = synth.render_radiograph(np.random.default_rng(3), [], size=64)
    raw = synth.make_dicom(pixels, transfer_syntax=RLELossless, patient_name="DOE^JANE")
    ds = pydicom.dcmread(io.BytesIO(raw))
    deid.deidentify(ds, KEY)
    out = pydicom.dcmread(io.BytesIO(deid.serialise(ds)))
    assert out.file_meta.TransferSyntaxUID == RLELossless
    assert out.PixelData == pydicom.dcmread(io.BytesIO(raw)).PixelData
    assert b"DOE" not in deid.serialise(ds)
