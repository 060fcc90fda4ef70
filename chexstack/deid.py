"""De-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, pseudonyms.

The profile's attribute table is data (`PROFILE`): tag -> action. Everything is deterministic (keyed
hashes, fixed dummy values, no clock, no randomness) so the same input bytes always give the same
output bytes, and therefore the same image_id.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import secrets
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from chexstack.blobstore import BlobStore

Action = Literal["X", "Z", "D", "U", "K"]

KEY_FILE: Final = ".pseudonym-key"
DEID_METHOD: Final = "DICOM PS3.15 E.1.1 Basic Profile; CheXStack deid v1"
BASIC_PROFILE_CODE: Final = ("113100", "DCM", "Basic Application Confidentiality Profile")


class DeidentificationError(ValueError):
    """The dataset cannot be de-identified safely; str(exc) is the user-facing reason."""


# (tag, keyword, action): the Basic Profile column of PS3.15 Table E.1-1 (DICOM 2024b) with none of
# the profile's options (UIDs replaced; no dates, device, institution or patient characteristics
# retained; descriptions removed, not cleaned), plus a few attributes older editions listed.
# Keywords are checked against pydicom's dictionary by the unit tests, so a mistyped tag cannot slip
# through. Where the standard offers a choice (X/Z, X/Z/D) the most conservative action that keeps
# the file valid is used: Z for type 2 attributes, X otherwise. The two X/Z/U* sequences (Referenced
# and Source Image Sequence) are kept: their items are de-identified like the top level, which
# replaces the instance UIDs they hold.
_TABLE: Final[tuple[tuple[int, str, Action], ...]] = (
    # Patient
    (0x00100010, "PatientName", "Z"),
    (0x00100020, "PatientID", "Z"),
    (0x00100021, "IssuerOfPatientID", "X"),
    (0x00100022, "TypeOfPatientID", "X"),
    (0x00100024, "IssuerOfPatientIDQualifiersSequence", "X"),
    (0x00100030, "PatientBirthDate", "Z"),
    (0x00100032, "PatientBirthTime", "X"),
    (0x00100033, "PatientBirthDateInAlternativeCalendar", "X"),
    (0x00100034, "PatientDeathDateInAlternativeCalendar", "X"),
    (0x00100035, "PatientAlternativeCalendar", "X"),
    (0x00100040, "PatientSex", "Z"),
    (0x00100050, "PatientInsurancePlanCodeSequence", "X"),
    (0x00100101, "PatientPrimaryLanguageCodeSequence", "X"),
    (0x00100102, "PatientPrimaryLanguageModifierCodeSequence", "X"),
    (0x00101000, "OtherPatientIDs", "X"),
    (0x00101001, "OtherPatientNames", "X"),
    (0x00101002, "OtherPatientIDsSequence", "X"),
    (0x00101005, "PatientBirthName", "X"),
    (0x00101010, "PatientAge", "X"),
    (0x00101020, "PatientSize", "X"),
    (0x00101030, "PatientWeight", "X"),
    (0x00101040, "PatientAddress", "X"),
    (0x00101050, "InsurancePlanIdentification", "X"),
    (0x00101060, "PatientMotherBirthName", "X"),
    (0x00101080, "MilitaryRank", "X"),
    (0x00101081, "BranchOfService", "X"),
    (0x00101090, "MedicalRecordLocator", "X"),
    (0x00101100, "ReferencedPatientPhotoSequence", "X"),
    (0x00102000, "MedicalAlerts", "X"),
    (0x00102110, "Allergies", "X"),
    (0x00102150, "CountryOfResidence", "X"),
    (0x00102152, "RegionOfResidence", "X"),
    (0x00102154, "PatientTelephoneNumbers", "X"),
    (0x00102155, "PatientTelecomInformation", "X"),
    (0x00102160, "EthnicGroup", "X"),
    (0x00102180, "Occupation", "X"),
    (0x001021A0, "SmokingStatus", "X"),
    (0x001021B0, "AdditionalPatientHistory", "X"),
    (0x001021C0, "PregnancyStatus", "X"),
    (0x001021D0, "LastMenstrualDate", "X"),
    (0x001021F0, "PatientReligiousPreference", "X"),
    (0x00102203, "PatientSexNeutered", "X"),
    (0x00102297, "ResponsiblePerson", "X"),
    (0x00102299, "ResponsibleOrganization", "X"),
    (0x00104000, "PatientComments", "X"),
    # Visit / admission
    (0x00380010, "AdmissionID", "X"),
    (0x00380011, "IssuerOfAdmissionID", "X"),
    (0x00380014, "IssuerOfAdmissionIDSequence", "X"),
    (0x0038001E, "ScheduledPatientInstitutionResidence", "X"),
    (0x00380020, "AdmittingDate", "X"),
    (0x00380021, "AdmittingTime", "X"),
    (0x00380040, "DischargeDiagnosisDescription", "X"),
    (0x00380050, "SpecialNeeds", "X"),
    (0x00380060, "ServiceEpisodeID", "X"),
    (0x00380061, "IssuerOfServiceEpisodeID", "X"),
    (0x00380062, "ServiceEpisodeDescription", "X"),
    (0x00380064, "IssuerOfServiceEpisodeIDSequence", "X"),
    (0x00380300, "CurrentPatientLocation", "X"),
    (0x00380400, "PatientInstitutionResidence", "X"),
    (0x00380500, "PatientState", "X"),
    (0x00384000, "VisitComments", "X"),
    # Study / series / instance: identifiers, dates and times
    (0x00080012, "InstanceCreationDate", "X"),
    (0x00080013, "InstanceCreationTime", "X"),
    (0x00080014, "InstanceCreatorUID", "U"),
    (0x00080015, "InstanceCoercionDateTime", "X"),
    (0x00080018, "SOPInstanceUID", "U"),
    (0x00080020, "StudyDate", "Z"),
    (0x00080021, "SeriesDate", "X"),
    (0x00080022, "AcquisitionDate", "Z"),
    (0x00080023, "ContentDate", "Z"),
    (0x00080024, "OverlayDate", "X"),
    (0x00080025, "CurveDate", "X"),
    (0x0008002A, "AcquisitionDateTime", "X"),
    (0x00080030, "StudyTime", "Z"),
    (0x00080031, "SeriesTime", "X"),
    (0x00080032, "AcquisitionTime", "Z"),
    (0x00080033, "ContentTime", "Z"),
    (0x00080034, "OverlayTime", "X"),
    (0x00080035, "CurveTime", "X"),
    (0x00080050, "AccessionNumber", "Z"),
    (0x00080058, "FailedSOPInstanceUIDList", "U"),
    (0x00080201, "TimezoneOffsetFromUTC", "X"),
    (0x0008010D, "ContextGroupExtensionCreatorUID", "U"),
    (0x00081030, "StudyDescription", "X"),
    (0x0008103E, "SeriesDescription", "X"),
    (0x00081084, "AdmittingDiagnosesCodeSequence", "X"),
    (0x00081080, "AdmittingDiagnosesDescription", "X"),
    (0x00081110, "ReferencedStudySequence", "X"),
    (0x00081111, "ReferencedPerformedProcedureStepSequence", "X"),
    (0x00081120, "ReferencedPatientSequence", "X"),
    (0x00081155, "ReferencedSOPInstanceUID", "U"),
    (0x00081195, "TransactionUID", "U"),
    (0x00082111, "DerivationDescription", "X"),
    (0x00083010, "IrradiationEventUID", "U"),
    (0x00084000, "IdentifyingComments", "X"),
    (0x00089123, "CreatorVersionUID", "U"),
    (0x00200010, "StudyID", "Z"),
    (0x0020000D, "StudyInstanceUID", "U"),
    (0x0020000E, "SeriesInstanceUID", "U"),
    (0x00200052, "FrameOfReferenceUID", "U"),
    (0x00200200, "SynchronizationFrameOfReferenceUID", "U"),
    (0x00203401, "ModifyingDeviceID", "X"),
    (0x00203404, "ModifyingDeviceManufacturer", "X"),
    (0x00203406, "ModifiedImageDescription", "X"),
    (0x00204000, "ImageComments", "X"),
    (0x00209158, "FrameComments", "X"),
    (0x00209161, "ConcatenationUID", "U"),
    (0x00209164, "DimensionOrganizationUID", "U"),
    (0x00284000, "ImagePresentationComments", "X"),
    (0x00281199, "PaletteColorLookupTableUID", "U"),
    (0x00281214, "LargePaletteColorLookupTableUID", "U"),
    (0x00020003, "MediaStorageSOPInstanceUID", "U"),
    (0x00020016, "SourceApplicationEntityTitle", "X"),
    (0x00041511, "ReferencedSOPInstanceUIDInFile", "U"),
    (0x00880140, "StorageMediaFileSetUID", "U"),
    (0x00880200, "IconImageSequence", "X"),
    (0x30060024, "ReferencedFrameOfReferenceUID", "U"),
    (0x300600C2, "RelatedFrameOfReferenceUID", "U"),
    (0x300A0013, "DoseReferenceUID", "U"),
    (0x0070031A, "FiducialUID", "U"),
    (0x0040A124, "UID", "U"),
    (0x0040DB0C, "TemplateExtensionOrganizationUID", "U"),
    (0x0040DB0D, "TemplateExtensionCreatorUID", "U"),
    (0x00404023, "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID", "U"),
    # Institution, staff and equipment
    (0x00080080, "InstitutionName", "X"),
    (0x00080081, "InstitutionAddress", "X"),
    (0x00080082, "InstitutionCodeSequence", "X"),
    (0x00080090, "ReferringPhysicianName", "Z"),
    (0x00080092, "ReferringPhysicianAddress", "X"),
    (0x00080094, "ReferringPhysicianTelephoneNumbers", "X"),
    (0x00080096, "ReferringPhysicianIdentificationSequence", "X"),
    (0x00081010, "StationName", "X"),
    (0x00081040, "InstitutionalDepartmentName", "X"),
    (0x00081048, "PhysiciansOfRecord", "X"),
    (0x00081049, "PhysiciansOfRecordIdentificationSequence", "X"),
    (0x00081050, "PerformingPhysicianName", "X"),
    (0x00081052, "PerformingPhysicianIdentificationSequence", "X"),
    (0x00081060, "NameOfPhysiciansReadingStudy", "X"),
    (0x00081062, "PhysiciansReadingStudyIdentificationSequence", "X"),
    (0x00081070, "OperatorsName", "X"),
    (0x00081072, "OperatorIdentificationSequence", "X"),
    (0x00181000, "DeviceSerialNumber", "X"),
    (0x00181002, "DeviceUID", "U"),
    (0x00181004, "PlateID", "X"),
    (0x00181005, "GeneratorID", "X"),
    (0x00181007, "CassetteID", "X"),
    (0x00181008, "GantryID", "X"),
    (0x00181009, "UniqueDeviceIdentifier", "X"),
    (0x0018100A, "UDISequence", "X"),
    (0x00181010, "SecondaryCaptureDeviceID", "X"),
    (0x00181200, "DateOfLastCalibration", "X"),
    (0x00181201, "TimeOfLastCalibration", "X"),
    (0x00181202, "DateTimeOfLastCalibration", "X"),
    (0x00181030, "ProtocolName", "X"),
    (0x00181400, "AcquisitionDeviceProcessingDescription", "X"),
    (0x00184000, "AcquisitionComments", "X"),
    (0x0018700A, "DetectorID", "X"),
    (0x00189424, "AcquisitionProtocolDescription", "X"),
    (0x0018A002, "ContributionDateTime", "X"),
    (0x0018A003, "ContributionDescription", "X"),
    (0x00180010, "ContrastBolusAgent", "Z"),
    (0x0070_0001, "GraphicAnnotationSequence", "D"),
    (0x00700084, "ContentCreatorName", "Z"),
    (0x00700086, "ContentCreatorIdentificationCodeSequence", "X"),
    (0x300E0008, "ReviewerName", "X"),
    # Requests, orders, procedure steps
    (0x00321000, "ScheduledStudyStartDate", "X"),
    (0x00321020, "ScheduledStudyLocation", "X"),
    (0x00321021, "ScheduledStudyLocationAETitle", "X"),
    (0x00321030, "ReasonForStudy", "X"),
    (0x00321032, "RequestingPhysician", "X"),
    (0x00321033, "RequestingService", "X"),
    (0x00321040, "StudyArrivalDate", "X"),
    (0x00321050, "StudyCompletionDate", "X"),
    (0x00321060, "RequestedProcedureDescription", "X"),
    (0x00321070, "RequestedContrastAgent", "X"),
    (0x00324000, "StudyComments", "X"),
    (0x00320012, "StudyIDIssuer", "X"),
    (0x00400001, "ScheduledStationAETitle", "X"),
    (0x00400002, "ScheduledProcedureStepStartDate", "X"),
    (0x00400003, "ScheduledProcedureStepStartTime", "X"),
    (0x00400004, "ScheduledProcedureStepEndDate", "X"),
    (0x00400005, "ScheduledProcedureStepEndTime", "X"),
    (0x00400006, "ScheduledPerformingPhysicianName", "X"),
    (0x00400007, "ScheduledProcedureStepDescription", "X"),
    (0x00400009, "ScheduledProcedureStepID", "X"),
    (0x0040000B, "ScheduledPerformingPhysicianIdentificationSequence", "X"),
    (0x00400010, "ScheduledStationName", "X"),
    (0x00400011, "ScheduledProcedureStepLocation", "X"),
    (0x00400012, "PreMedication", "X"),
    (0x00400241, "PerformedStationAETitle", "X"),
    (0x00400242, "PerformedStationName", "X"),
    (0x00400243, "PerformedLocation", "X"),
    (0x00400244, "PerformedProcedureStepStartDate", "X"),
    (0x00400245, "PerformedProcedureStepStartTime", "X"),
    (0x00404028, "PerformedStationNameCodeSequence", "X"),
    (0x00400250, "PerformedProcedureStepEndDate", "X"),
    (0x00400251, "PerformedProcedureStepEndTime", "X"),
    (0x00400253, "PerformedProcedureStepID", "X"),
    (0x00400254, "PerformedProcedureStepDescription", "X"),
    (0x00400275, "RequestAttributesSequence", "X"),
    (0x00400280, "CommentsOnThePerformedProcedureStep", "X"),
    (0x00400555, "AcquisitionContextSequence", "X"),
    (0x00401001, "RequestedProcedureID", "X"),
    (0x00401002, "ReasonForTheRequestedProcedure", "X"),
    (0x00401004, "PatientTransportArrangements", "X"),
    (0x00401005, "RequestedProcedureLocation", "X"),
    (0x00401010, "NamesOfIntendedRecipientsOfResults", "X"),
    (0x00401011, "IntendedRecipientsOfResultsIdentificationSequence", "X"),
    (0x00401101, "PersonIdentificationCodeSequence", "D"),
    (0x00401102, "PersonAddress", "X"),
    (0x00401103, "PersonTelephoneNumbers", "X"),
    (0x00401104, "PersonTelecomInformation", "X"),
    (0x00401400, "RequestedProcedureComments", "X"),
    (0x00402001, "ReasonForTheImagingServiceRequest", "X"),
    (0x00402004, "IssueDateOfImagingServiceRequest", "X"),
    (0x00402005, "IssueTimeOfImagingServiceRequest", "X"),
    (0x00402008, "OrderEnteredBy", "X"),
    (0x00402009, "OrderEntererLocation", "X"),
    (0x00402010, "OrderCallbackPhoneNumber", "X"),
    (0x00402016, "PlacerOrderNumberImagingServiceRequest", "Z"),
    (0x00402017, "FillerOrderNumberImagingServiceRequest", "Z"),
    (0x00402400, "ImagingServiceRequestComments", "X"),
    (0x00403001, "ConfidentialityConstraintOnPatientDataDescription", "X"),
    (0x00404025, "ScheduledStationNameCodeSequence", "X"),
    (0x00404027, "ScheduledStationGeographicLocationCodeSequence", "X"),
    (0x00404030, "PerformedStationGeographicLocationCodeSequence", "X"),
    (0x00404034, "ScheduledHumanPerformersSequence", "X"),
    (0x00404035, "ActualHumanPerformersSequence", "X"),
    (0x00404036, "HumanPerformerOrganization", "X"),
    (0x00404037, "HumanPerformerName", "X"),
    # Structured content, observers, results and interpretation
    (0x0040A073, "VerifyingObserverSequence", "D"),
    (0x0040A075, "VerifyingObserverName", "D"),
    (0x0040A078, "AuthorObserverSequence", "X"),
    (0x0040A07A, "ParticipantSequence", "X"),
    (0x0040A07C, "CustodialOrganizationSequence", "X"),
    (0x0040A082, "ParticipationDateTime", "Z"),
    (0x0040A088, "VerifyingObserverIdentificationCodeSequence", "Z"),
    (0x0040A027, "VerifyingOrganization", "D"),
    (0x0040A030, "VerificationDateTime", "D"),
    (0x0040A032, "ObservationDateTime", "X"),
    (0x0040A120, "DateTime", "D"),
    (0x0040A121, "Date", "D"),
    (0x0040A122, "Time", "D"),
    (0x0040A123, "PersonName", "D"),
    (0x0040A730, "ContentSequence", "D"),
    (0x40000010, "Arbitrary", "X"),
    (0x40004000, "TextComments", "X"),
    (0x40080042, "ResultsIDIssuer", "X"),
    (0x40080102, "InterpretationRecorder", "X"),
    (0x4008010A, "InterpretationTranscriber", "X"),
    (0x4008010B, "InterpretationText", "X"),
    (0x4008010C, "InterpretationAuthor", "X"),
    (0x40080111, "InterpretationApproverSequence", "X"),
    (0x40080114, "PhysicianApprovingInterpretation", "X"),
    (0x40080115, "InterpretationDiagnosisDescription", "X"),
    (0x40080118, "ResultsDistributionListSequence", "X"),
    (0x40080119, "DistributionName", "X"),
    (0x4008011A, "DistributionAddress", "X"),
    (0x40080202, "InterpretationIDIssuer", "X"),
    (0x40080300, "Impressions", "X"),
    (0x40084000, "ResultsComments", "X"),
    (0x20300020, "TextString", "X"),
    (0x00880904, "TopicTitle", "X"),
    (0x00880906, "TopicSubject", "X"),
    (0x00880910, "TopicAuthor", "X"),
    (0x00880912, "TopicKeywords", "X"),
    # Signatures and audit trails (may quote original values)
    (0x04000100, "DigitalSignatureUID", "U"),
    (0x04000402, "ReferencedDigitalSignatureSequence", "X"),
    (0x04000403, "ReferencedSOPInstanceMACSequence", "X"),
    (0x04000404, "MAC", "X"),
    (0x04000550, "ModifiedAttributesSequence", "X"),
    (0x04000561, "OriginalAttributesSequence", "X"),
    (0xFFFAFFFA, "DigitalSignaturesSequence", "X"),
    (0xFFFCFFFC, "DataSetTrailingPadding", "X"),
    # The rest of Table E.1-1 (2024b), by tag: devices and their dates, RT, specimens, clinical
    # trials, camera/GPS, observations, AE titles, modification history. A combined action takes
    # X (X/Z, X/D) or Z (Z/D): none of these is type 1 or 2 in the DX/CR images accepted here.
    (0x00001000, "AffectedSOPInstanceUID", "X"),
    (0x00001001, "RequestedSOPInstanceUID", "U"),
    (0x00080017, "AcquisitionUID", "U"),
    (0x00080019, "PyramidUID", "U"),
    (0x00080054, "RetrieveAETitle", "X"),
    (0x00080055, "StationAETitle", "X"),
    (0x0008009C, "ConsultingPhysicianName", "Z"),
    (0x0008009D, "ConsultingPhysicianIdentificationSequence", "X"),
    (0x00080106, "ContextGroupVersion", "D"),
    (0x00080107, "ContextGroupLocalVersion", "D"),
    (0x00081000, "NetworkID", "X"),
    (0x00081041, "InstitutionalDepartmentTypeCodeSequence", "X"),
    (0x00081088, "PyramidDescription", "X"),
    (0x00120010, "ClinicalTrialSponsorName", "D"),
    (0x00120020, "ClinicalTrialProtocolID", "D"),
    (0x00120021, "ClinicalTrialProtocolName", "Z"),
    (0x00120022, "IssuerOfClinicalTrialProtocolID", "X"),
    (0x00120023, "OtherClinicalTrialProtocolIDsSequence", "X"),
    (0x00120030, "ClinicalTrialSiteID", "Z"),
    (0x00120031, "ClinicalTrialSiteName", "Z"),
    (0x00120032, "IssuerOfClinicalTrialSiteID", "X"),
    (0x00120040, "ClinicalTrialSubjectID", "D"),
    (0x00120041, "IssuerOfClinicalTrialSubjectID", "X"),
    (0x00120042, "ClinicalTrialSubjectReadingID", "D"),
    (0x00120043, "IssuerOfClinicalTrialSubjectReadingID", "X"),
    (0x00120050, "ClinicalTrialTimePointID", "Z"),
    (0x00120051, "ClinicalTrialTimePointDescription", "X"),
    (0x00120055, "IssuerOfClinicalTrialTimePointID", "X"),
    (0x00120060, "ClinicalTrialCoordinatingCenterName", "Z"),
    (0x00120071, "ClinicalTrialSeriesID", "X"),
    (0x00120072, "ClinicalTrialSeriesDescription", "X"),
    (0x00120073, "IssuerOfClinicalTrialSeriesID", "X"),
    (0x00120081, "ClinicalTrialProtocolEthicsCommitteeName", "D"),
    (0x00120082, "ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "X"),
    (0x00120086, "EthicsCommitteeApprovalEffectivenessStartDate", "X"),
    (0x00120087, "EthicsCommitteeApprovalEffectivenessEndDate", "X"),
    (0x0014407C, "CalibrationTime", "X"),
    (0x0014407E, "CalibrationDate", "X"),
    (0x0016002B, "MakerNote", "X"),
    (0x0016004B, "DeviceSettingDescription", "X"),
    (0x0016004D, "CameraOwnerName", "X"),
    (0x0016004E, "LensSpecification", "X"),
    (0x0016004F, "LensMake", "X"),
    (0x00160050, "LensModel", "X"),
    (0x00160051, "LensSerialNumber", "X"),
    (0x00160070, "GPSVersionID", "X"),
    (0x00160071, "GPSLatitudeRef", "X"),
    (0x00160072, "GPSLatitude", "X"),
    (0x00160073, "GPSLongitudeRef", "X"),
    (0x00160074, "GPSLongitude", "X"),
    (0x00160075, "GPSAltitudeRef", "X"),
    (0x00160076, "GPSAltitude", "X"),
    (0x00160077, "GPSTimeStamp", "X"),
    (0x00160078, "GPSSatellites", "X"),
    (0x00160079, "GPSStatus", "X"),
    (0x0016007A, "GPSMeasureMode", "X"),
    (0x0016007B, "GPSDOP", "X"),
    (0x0016007C, "GPSSpeedRef", "X"),
    (0x0016007D, "GPSSpeed", "X"),
    (0x0016007E, "GPSTrackRef", "X"),
    (0x0016007F, "GPSTrack", "X"),
    (0x00160080, "GPSImgDirectionRef", "X"),
    (0x00160081, "GPSImgDirection", "X"),
    (0x00160082, "GPSMapDatum", "X"),
    (0x00160083, "GPSDestLatitudeRef", "X"),
    (0x00160084, "GPSDestLatitude", "X"),
    (0x00160085, "GPSDestLongitudeRef", "X"),
    (0x00160086, "GPSDestLongitude", "X"),
    (0x00160087, "GPSDestBearingRef", "X"),
    (0x00160088, "GPSDestBearing", "X"),
    (0x00160089, "GPSDestDistanceRef", "X"),
    (0x0016008A, "GPSDestDistance", "X"),
    (0x0016008B, "GPSProcessingMethod", "X"),
    (0x0016008C, "GPSAreaInformation", "X"),
    (0x0016008D, "GPSDateStamp", "X"),
    (0x0016008E, "GPSDifferential", "X"),
    (0x00180027, "InterventionDrugStopTime", "X"),
    (0x00180035, "InterventionDrugStartTime", "X"),
    (0x0018100B, "ManufacturerDeviceClassUID", "U"),
    (0x00181012, "DateOfSecondaryCapture", "X"),
    (0x00181014, "TimeOfSecondaryCapture", "X"),
    (0x00181042, "ContrastBolusStartTime", "X"),
    (0x00181043, "ContrastBolusStopTime", "X"),
    (0x00181072, "RadiopharmaceuticalStartTime", "X"),
    (0x00181073, "RadiopharmaceuticalStopTime", "X"),
    (0x00181078, "RadiopharmaceuticalStartDateTime", "X"),
    (0x00181079, "RadiopharmaceuticalStopDateTime", "X"),
    (0x001811BB, "AcquisitionFieldOfViewLabel", "D"),
    (0x00181203, "CalibrationDateTime", "Z"),
    (0x00181204, "DateOfManufacture", "X"),
    (0x00181205, "DateOfInstallation", "X"),
    (0x00182042, "TargetUID", "U"),
    (0x00185011, "TransducerIdentificationSequence", "X"),
    (0x0018700C, "DateOfLastDetectorCalibration", "X"),
    (0x0018700E, "TimeOfLastDetectorCalibration", "X"),
    (0x00189074, "FrameAcquisitionDateTime", "D"),
    (0x00189151, "FrameReferenceDateTime", "D"),
    (0x00189185, "RespiratoryMotionCompensationTechniqueDescription", "X"),
    (0x00189367, "XRaySourceID", "D"),
    (0x00189369, "SourceStartDateTime", "D"),
    (0x0018936A, "SourceEndDateTime", "D"),
    (0x00189371, "XRayDetectorID", "D"),
    (0x00189373, "XRayDetectorLabel", "X"),
    (0x0018937B, "MultienergyAcquisitionDescription", "X"),
    (0x0018937F, "DecompositionDescription", "X"),
    (0x00189516, "StartAcquisitionDateTime", "X"),
    (0x00189517, "EndAcquisitionDateTime", "X"),
    (0x00189623, "FunctionalSyncPulse", "D"),
    (0x00189701, "DecayCorrectionDateTime", "D"),
    (0x00189804, "ExclusionStartDateTime", "D"),
    (0x00189919, "InstructionPerformedDateTime", "Z"),
    (0x00189937, "RequestedSeriesDescription", "X"),
    (0x00200027, "PyramidLabel", "X"),
    (0x00203403, "ModifiedImageDate", "X"),
    (0x00203405, "ModifiedImageTime", "X"),
    (0x00320032, "StudyVerifiedDate", "X"),
    (0x00320033, "StudyVerifiedTime", "X"),
    (0x00320034, "StudyReadDate", "X"),
    (0x00320035, "StudyReadTime", "X"),
    (0x00321001, "ScheduledStudyStartTime", "X"),
    (0x00321010, "ScheduledStudyStopDate", "X"),
    (0x00321011, "ScheduledStudyStopTime", "X"),
    (0x00321041, "StudyArrivalTime", "X"),
    (0x00321051, "StudyCompletionTime", "X"),
    (0x00321066, "ReasonForVisit", "X"),
    (0x00321067, "ReasonForVisitCodeSequence", "X"),
    (0x00340001, "FlowIdentifierSequence", "D"),
    (0x00340002, "FlowIdentifier", "D"),
    (0x00340005, "SourceIdentifier", "D"),
    (0x00340007, "FrameOriginTimestamp", "D"),
    (0x00380004, "ReferencedPatientAliasSequence", "X"),
    (0x0038001A, "ScheduledAdmissionDate", "X"),
    (0x0038001B, "ScheduledAdmissionTime", "X"),
    (0x0038001C, "ScheduledDischargeDate", "X"),
    (0x0038001D, "ScheduledDischargeTime", "X"),
    (0x00380030, "DischargeDate", "X"),
    (0x00380032, "DischargeTime", "X"),
    (0x003A0310, "MultiplexGroupUID", "U"),
    (0x003A0314, "ImpedanceMeasurementDateTime", "D"),
    (0x003A0329, "WaveformFilterDescription", "X"),
    (0x003A032B, "FilterLookupTableDescription", "X"),
    (0x00400310, "CommentsOnRadiationDose", "X"),
    (0x0040050A, "SpecimenAccessionNumber", "X"),
    (0x00400512, "ContainerIdentifier", "D"),
    (0x00400513, "IssuerOfTheContainerIdentifierSequence", "Z"),
    (0x0040051A, "ContainerDescription", "X"),
    (0x00400551, "SpecimenIdentifier", "D"),
    (0x00400554, "SpecimenUID", "U"),
    (0x00400562, "IssuerOfTheSpecimenIdentifierSequence", "Z"),
    (0x00400600, "SpecimenShortDescription", "X"),
    (0x00400602, "SpecimenDetailedDescription", "X"),
    (0x00400610, "SpecimenPreparationSequence", "Z"),
    (0x004006FA, "SlideIdentifier", "X"),
    (0x0040100A, "ReasonForRequestedProcedureCodeSequence", "X"),
    (0x00402011, "OrderCallbackTelecomInformation", "X"),
    (0x00404005, "ScheduledProcedureStepStartDateTime", "X"),
    (0x00404008, "ScheduledProcedureStepExpirationDateTime", "X"),
    (0x00404010, "ScheduledProcedureStepModificationDateTime", "X"),
    (0x00404011, "ExpectedCompletionDateTime", "X"),
    (0x00404050, "PerformedProcedureStepStartDateTime", "X"),
    (0x00404051, "PerformedProcedureStepEndDateTime", "X"),
    (0x00404052, "ProcedureStepCancellationDateTime", "X"),
    (0x0040A023, "FindingsGroupRecordingDateTrial", "X"),
    (0x0040A024, "FindingsGroupRecordingTimeTrial", "X"),
    (0x0040A033, "ObservationStartDateTime", "X"),
    (0x0040A110, "DateOfDocumentOrVerbalTransactionTrial", "X"),
    (0x0040A112, "TimeOfDocumentCreationOrVerbalTransactionTrial", "X"),
    (0x0040A13A, "ReferencedDateTime", "D"),
    (0x0040A171, "ObservationUID", "U"),
    (0x0040A172, "ReferencedObservationUIDTrial", "U"),
    (0x0040A192, "ObservationDateTrial", "X"),
    (0x0040A193, "ObservationTimeTrial", "X"),
    (0x0040A307, "CurrentObserverTrial", "X"),
    (0x0040A352, "VerbalSourceTrial", "X"),
    (0x0040A353, "AddressTrial", "X"),
    (0x0040A354, "TelephoneNumberTrial", "X"),
    (0x0040A358, "VerbalSourceIdentifierCodeSequenceTrial", "X"),
    (0x0040A402, "ObservationSubjectUIDTrial", "U"),
    (0x0040DB06, "TemplateVersion", "X"),
    (0x0040DB07, "TemplateLocalVersion", "X"),
    (0x0040E004, "HL7DocumentEffectiveTime", "X"),
    (0x00420011, "EncapsulatedDocument", "D"),
    (0x00440004, "ApprovalStatusDateTime", "X"),
    (0x0044000B, "ProductExpirationDateTime", "X"),
    (0x00440010, "SubstanceAdministrationDateTime", "X"),
    (0x00440104, "AssertionDateTime", "D"),
    (0x00440105, "AssertionExpirationDateTime", "X"),
    (0x0050001B, "ContainerComponentID", "X"),
    (0x00500020, "DeviceDescription", "X"),
    (0x00500021, "LongDeviceDescription", "X"),
    (0x00620021, "TrackingUID", "U"),
    (0x00640003, "SourceFrameOfReferenceUID", "U"),
    (0x00686226, "EffectiveDateTime", "D"),
    (0x00686270, "InformationIssueDateTime", "D"),
    (0x006A0003, "AnnotationGroupUID", "D"),
    (0x006A0005, "AnnotationGroupLabel", "D"),
    (0x006A0006, "AnnotationGroupDescription", "X"),
    (0x00700082, "PresentationCreationDate", "X"),
    (0x00700083, "PresentationCreationTime", "X"),
    (0x00701101, "PresentationDisplayCollectionUID", "U"),
    (0x00701102, "PresentationSequenceCollectionUID", "U"),
    (0x0072000A, "HangingProtocolCreationDateTime", "D"),
    (0x0072005E, "SelectorAEValue", "D"),
    (0x0072005F, "SelectorASValue", "D"),
    (0x00720061, "SelectorDAValue", "D"),
    (0x00720063, "SelectorDTValue", "D"),
    (0x00720065, "SelectorOBValue", "D"),
    (0x00720066, "SelectorLOValue", "D"),
    (0x00720068, "SelectorLTValue", "D"),
    (0x0072006A, "SelectorPNValue", "D"),
    (0x0072006B, "SelectorTMValue", "D"),
    (0x0072006C, "SelectorSHValue", "D"),
    (0x0072006D, "SelectorUNValue", "D"),
    (0x0072006E, "SelectorSTValue", "D"),
    (0x00720070, "SelectorUTValue", "D"),
    (0x00720071, "SelectorURValue", "D"),
    (0x00741234, "ReceivingAE", "X"),
    (0x00741236, "RequestingAE", "X"),
    (0x01000420, "SOPAuthorizationDateTime", "X"),
    (0x04000105, "DigitalSignatureDateTime", "D"),
    (0x04000115, "CertificateOfSigner", "D"),
    (0x04000310, "CertifiedTimestamp", "X"),
    (0x04000551, "NonconformingModifiedAttributesSequence", "X"),
    (0x04000552, "NonconformingDataElementValue", "X"),
    (0x04000562, "AttributeModificationDateTime", "D"),
    (0x04000563, "ModifyingSystem", "D"),
    (0x04000564, "SourceOfPreviousValues", "Z"),
    (0x04000565, "ReasonForTheAttributeModification", "D"),
    (0x04000600, "InstanceOriginStatus", "X"),
    (0x21000040, "CreationDate", "X"),
    (0x21000050, "CreationTime", "X"),
    (0x21000070, "Originator", "X"),
    (0x21000140, "DestinationAE", "D"),
    (0x22000002, "LabelText", "X"),
    (0x22000005, "BarcodeValue", "X"),
    (0x30020121, "PositionAcquisitionTemplateName", "X"),
    (0x30020123, "PositionAcquisitionTemplateDescription", "X"),
    (0x30060002, "StructureSetLabel", "D"),
    (0x30060004, "StructureSetName", "X"),
    (0x30060006, "StructureSetDescription", "X"),
    (0x30060008, "StructureSetDate", "Z"),
    (0x30060009, "StructureSetTime", "Z"),
    (0x30060026, "ROIName", "Z"),
    (0x30060028, "ROIDescription", "X"),
    (0x3006002D, "ROIDateTime", "X"),
    (0x3006002E, "ROIObservationDateTime", "X"),
    (0x30060038, "ROIGenerationDescription", "X"),
    (0x3006004D, "ROICreatorSequence", "X"),
    (0x3006004E, "ROIInterpreterSequence", "X"),
    (0x30060085, "ROIObservationLabel", "X"),
    (0x30060088, "ROIObservationDescription", "X"),
    (0x300600A6, "ROIInterpreter", "Z"),
    (0x30080024, "TreatmentControlPointDate", "D"),
    (0x30080025, "TreatmentControlPointTime", "D"),
    (0x30080054, "FirstTreatmentDate", "X"),
    (0x30080056, "MostRecentTreatmentDate", "X"),
    (0x30080105, "SourceSerialNumber", "X"),
    (0x30080162, "SafePositionExitDate", "D"),
    (0x30080164, "SafePositionExitTime", "D"),
    (0x30080166, "SafePositionReturnDate", "D"),
    (0x30080168, "SafePositionReturnTime", "D"),
    (0x30080250, "TreatmentDate", "X"),
    (0x30080251, "TreatmentTime", "X"),
    (0x300A0002, "RTPlanLabel", "D"),
    (0x300A0003, "RTPlanName", "X"),
    (0x300A0004, "RTPlanDescription", "X"),
    (0x300A0006, "RTPlanDate", "X"),
    (0x300A0007, "RTPlanTime", "X"),
    (0x300A000B, "TreatmentSites", "X"),
    (0x300A000E, "PrescriptionDescription", "X"),
    (0x300A0016, "DoseReferenceDescription", "X"),
    (0x300A0072, "FractionGroupDescription", "X"),
    (0x300A0083, "ReferencedDoseReferenceUID", "U"),
    (0x300A00B2, "TreatmentMachineName", "X"),
    (0x300A00C3, "BeamDescription", "X"),
    (0x300A00DD, "BolusDescription", "X"),
    (0x300A0196, "FixationDeviceDescription", "X"),
    (0x300A01A6, "ShieldingDeviceDescription", "X"),
    (0x300A01B2, "SetupTechniqueDescription", "X"),
    (0x300A0216, "SourceManufacturer", "X"),
    (0x300A022C, "SourceStrengthReferenceDate", "D"),
    (0x300A022E, "SourceStrengthReferenceTime", "D"),
    (0x300A02EB, "CompensatorDescription", "X"),
    (0x300A0608, "TreatmentPositionGroupLabel", "D"),
    (0x300A0609, "TreatmentPositionGroupUID", "U"),
    (0x300A0611, "RTAccessoryHolderSlotID", "Z"),
    (0x300A0615, "RTAccessoryDeviceSlotID", "Z"),
    (0x300A0619, "RadiationDoseIdentificationLabel", "D"),
    (0x300A0623, "RadiationDoseInVivoMeasurementLabel", "D"),
    (0x300A062A, "RTToleranceSetLabel", "D"),
    (0x300A0650, "PatientSetupUID", "U"),
    (0x300A0676, "EquipmentFrameOfReferenceDescription", "X"),
    (0x300A067C, "RadiationGenerationModeLabel", "D"),
    (0x300A067D, "RadiationGenerationModeDescription", "Z"),
    (0x300A0700, "TreatmentSessionUID", "U"),
    (0x300A0734, "TreatmentToleranceViolationDescription", "D"),
    (0x300A0736, "TreatmentToleranceViolationDateTime", "D"),
    (0x300A073A, "RecordedRTControlPointDateTime", "D"),
    (0x300A0741, "InterlockDateTime", "D"),
    (0x300A0742, "InterlockDescription", "D"),
    (0x300A0760, "OverrideDateTime", "D"),
    (0x300A0783, "InterlockOriginDescription", "D"),
    (0x300A0785, "ReferencedTreatmentPositionGroupUID", "U"),
    (0x300A078E, "PatientTreatmentPreparationProcedureParameterDescription", "X"),
    (0x300A0792, "PatientTreatmentPreparationMethodDescription", "X"),
    (0x300A0794, "PatientSetupPhotoDescription", "X"),
    (0x300A079A, "DisplacementReferenceLabel", "X"),
    (0x300C0113, "ReasonForOmissionDescription", "X"),
    (0x300C0127, "BeamHoldTransitionDateTime", "D"),
    (0x300E0004, "ReviewDate", "Z"),
    (0x300E0005, "ReviewTime", "Z"),
    (0x30100006, "ConceptualVolumeUID", "U"),
    (0x3010000B, "ReferencedConceptualVolumeUID", "U"),
    (0x3010000F, "ConceptualVolumeCombinationDescription", "Z"),
    (0x30100013, "ConstituentConceptualVolumeUID", "U"),
    (0x30100015, "SourceConceptualVolumeUID", "U"),
    (0x30100017, "ConceptualVolumeDescription", "Z"),
    (0x3010001B, "DeviceAlternateIdentifier", "Z"),
    (0x3010002D, "DeviceLabel", "D"),
    (0x30100031, "ReferencedFiducialsUID", "U"),
    (0x30100033, "UserContentLabel", "D"),
    (0x30100034, "UserContentLongLabel", "D"),
    (0x30100035, "EntityLabel", "D"),
    (0x30100036, "EntityName", "X"),
    (0x30100037, "EntityDescription", "X"),
    (0x30100038, "EntityLongLabel", "D"),
    (0x3010003B, "RTTreatmentPhaseUID", "U"),
    (0x30100043, "ManufacturerDeviceIdentifier", "Z"),
    (0x3010004C, "IntendedPhaseStartDate", "X"),
    (0x3010004D, "IntendedPhaseEndDate", "X"),
    (0x30100054, "RTPrescriptionLabel", "D"),
    (0x30100056, "RTTreatmentApproachLabel", "X"),
    (0x3010005A, "RTPhysicianIntentNarrative", "Z"),
    (0x3010005C, "ReasonForSuperseding", "Z"),
    (0x30100061, "PriorTreatmentDoseDescription", "X"),
    (0x3010006E, "DosimetricObjectiveUID", "U"),
    (0x3010006F, "ReferencedDosimetricObjectiveUID", "U"),
    (0x30100077, "TreatmentSite", "X"),
    (0x3010007A, "TreatmentTechniqueNotes", "Z"),
    (0x3010007B, "PrescriptionNotes", "Z"),
    (0x3010007F, "FractionationNotes", "Z"),
    (0x30100081, "PrescriptionNotesSequence", "Z"),
    (0x30100085, "IntendedFractionStartTime", "X"),
    (0x40080040, "ResultsID", "X"),
    (0x40080100, "InterpretationRecordedDate", "X"),
    (0x40080101, "InterpretationRecordedTime", "X"),
    (0x40080108, "InterpretationTranscriptionDate", "X"),
    (0x40080109, "InterpretationTranscriptionTime", "X"),
    (0x40080112, "InterpretationApprovalDate", "X"),
    (0x40080113, "InterpretationApprovalTime", "X"),
    (0x40080200, "InterpretationID", "X"),
)
PROFILE: Final[dict[int, Action]] = {tag: action for tag, _, action in _TABLE}
PROFILE_KEYWORDS: Final[dict[int, str]] = {tag: kw for tag, kw, _ in _TABLE}

# Repeating groups: curves (50xx) are retired and may hold anything; overlays (60xx) can draw text
# onto the image, so the whole group goes rather than only its data and comments.
_REMOVED_GROUP_RANGES: Final = ((0x5000, 0x50FF), (0x6000, 0x60FF))

_DUMMY: Final[dict[str, Any]] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "PN": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "FL": 0.0,
    "FD": 0.0,
}
# Free-text VRs only: numbers, dates and code strings cannot quote a name, and blanking one of them
# because it happens to contain a numeric patient ID could break the image's geometry.
_FREE_TEXT_VRS: Final = frozenset({"AE", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})


def load_or_create_key(store: BlobStore | Path, configured: str | None) -> bytes:
    """The pseudonym key: the configured one, else one generated once into `<store>/.pseudonym-key`.

    The file holds 64 hex characters and the key is those characters, so copying the file's content
    into CHEXSTACK_PSEUDONYM_KEY gives the same pseudonyms.
    """
    if configured:
        return configured.encode()
    root = store if isinstance(store, Path) else store.root
    path = root / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = root / f".pseudonym-key.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the name exists: two processes racing both end up with the winner's key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_text().strip()
    if not key:
        raise DeidentificationError(f"the pseudonym key file {path} is empty")
    return key.encode()


def normalise_patient_id(patient_id: str) -> str:
    """IDs typed by hand differ in width, case and surrounding space; those are the same patient."""
    return unicodedata.normalize("NFKC", patient_id).strip().upper()


def pseudonym(key: bytes, patient_id: str) -> str:
    """`p-` + the first 16 hex digits of HMAC-SHA256(key, normalised id): stable, not reversible."""
    if not key:
        raise ValueError("the pseudonym key must not be empty")
    digest = hmac.new(key, normalise_patient_id(patient_id).encode(), hashlib.sha256).hexdigest()
    return "p-" + digest[:16]


def replacement_uid(key: bytes, uid: str) -> str:
    """A keyed-hash UID under 2.25 (UUID-derived root): the same input UID always maps to the same one."""
    digest = hmac.new(key, b"uid:" + uid.strip().rstrip("\0").encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _in_removed_group(tag: Any) -> bool:
    return any(lo <= tag.group <= hi for lo, hi in _REMOVED_GROUP_RANGES)


def _empty_value(vr: str) -> Any:
    return [] if vr == "SQ" else None


def _apply(ds: Any, key: bytes) -> None:
    """Apply the profile to one dataset and, recursively, to every item of every sequence."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or _in_removed_group(tag):
            del ds[tag]
            continue
        action = PROFILE.get(int(tag), "K")
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = _empty_value(elem.VR)
        elif action == "D":
            # A dummy for a sequence is an empty sequence: any item would have to be invented.
            elem.value = [] if elem.VR == "SQ" else _DUMMY.get(elem.VR, _empty_value(elem.VR))
        elif action == "U":
            elem.value = _map_uids(elem.value, key)
        if action == "K" and elem.VR == "SQ":
            for item in elem.value:
                _apply(item, key)


def _map_uids(value: Any, key: bytes) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, str):
        return replacement_uid(key, value)
    return [replacement_uid(key, str(v)) for v in value]


def _identifying_strings(ds: Any) -> set[str]:
    """Upper-cased name components and IDs of the patient, for the final scrub of free text."""
    found: set[str] = set()
    for kw in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName"):
        for value in _values(_element(ds, kw)):
            for part in str(value).replace("=", "^").split("^"):
                if len(part.strip()) >= 3:
                    found.add(part.strip().upper())
    for kw in ("PatientID", "OtherPatientIDs"):
        for value in _values(_element(ds, kw)):
            if len(str(value).strip()) >= 3:
                found.add(str(value).strip().upper())
    return found


def _element(ds: Any, keyword: str) -> Any:
    """The data element (not its value, which is what Dataset.get returns for a keyword) or None."""
    if keyword not in ds:
        return None
    return ds[keyword]


def _values(elem: Any) -> Iterable[Any]:
    if elem is None or elem.value in (None, ""):
        return ()
    if elem.VM > 1:
        return tuple(elem.value)
    return (elem.value,)


def _scrub_leftovers(ds: Any, needles: set[str]) -> None:
    """Defence in depth past the table: blank every person name, and any text quoting the patient."""
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _scrub_leftovers(item, needles)
        elif elem.VR == "PN" and elem.value not in (None, ""):
            elem.value = None
        elif elem.VR in _FREE_TEXT_VRS and needles:
            text = " ".join(str(v) for v in _values(elem)).upper()
            if any(n in text for n in needles):
                elem.value = None


def deidentify(ds: Any, key: bytes, patient_id: str | None = None) -> str | None:
    """De-identify `ds` (a pydicom Dataset) in place; return the patient pseudonym or None.

    The pseudonym comes from `patient_id` when given, else from the dataset's PatientID. Raises
    DeidentificationError for an image that says it shows burned-in identifiers.
    """
    from pydicom.dataset import Dataset

    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        raise DeidentificationError("BurnedInAnnotation is YES: the pixels may show patient identifiers")
    source_id = patient_id if patient_id is not None else str(ds.get("PatientID", "") or "")
    pseudo = pseudonym(key, source_id) if source_id.strip() else None
    needles = _identifying_strings(ds)

    _apply(ds, key)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        _apply(file_meta, key)
    _scrub_leftovers(ds, needles)

    ds.PatientName = pseudo or ""
    ds.PatientID = pseudo or ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = [code]
    return pseudo


def serialise(ds: Any) -> bytes:
    """The dataset as a DICOM Part 10 file in its original transfer syntax (deterministic)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- PNG / JPEG metadata ------------------------------------------------------------------------------

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# Chunks copied as they are. Text/EXIF/time chunks can carry identifiers; an unknown ancillary chunk
# is dropped too since it cannot be vetted, and no ancillary chunk is needed to decode the pixels.
_PNG_KEEP: Final = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP",
     b"mDCV", b"cLLI", b"bKGD", b"hIST", b"pHYs", b"acTL", b"fcTL", b"fdAT"}
)  # fmt: skip


def strip_png_metadata(data: bytes) -> bytes:
    """Drop tEXt/zTXt/iTXt/eXIf/tIME (and unknown ancillary) chunks and anything after IEND.

    Whole chunks are copied, so every CRC stays valid and the pixel data is untouched.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise DeidentificationError("not a PNG file")
    out = [_PNG_SIGNATURE]
    i = len(_PNG_SIGNATURE)
    while True:
        if i + 12 > len(data):
            raise DeidentificationError("malformed PNG: chunk runs past the end of the file")
        length = int.from_bytes(data[i : i + 4], "big")
        ctype = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > len(data):
            raise DeidentificationError("malformed PNG: chunk runs past the end of the file")
        critical = not ctype[0] & 0x20
        if ctype in _PNG_KEEP or critical:
            out.append(data[i:end])
        if ctype == b"IEND":
            return b"".join(out)
        i = end


# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
_ORIENTATION_TAG: Final = 0x0112


def strip_jpeg_metadata(data: bytes) -> bytes:
    """Drop COM and APPn segments but APP0 JFIF, APP2 ICC and APP14 Adobe; reduce EXIF to Orientation.

    APP14 Adobe is kept because its colour-transform flag changes how the pixels decode. Scan data is
    copied byte for byte; anything after EOI is dropped.
    """
    if not data.startswith(b"\xff\xd8"):
        raise DeidentificationError("not a JPEG file")
    out = [b"\xff\xd8"]
    i, n = 2, len(data)
    exif_done = False
    while i < n:
        if data[i] != 0xFF:
            raise DeidentificationError(f"malformed JPEG: expected a marker at byte {i}")
        marker = data[i + 1] if i + 1 < n else None
        if marker is None:
            raise DeidentificationError("malformed JPEG: ends inside a marker")
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker in _JPEG_STANDALONE:
            out.append(data[i : i + 2])
            i += 2
            continue
        if i + 4 > n:
            raise DeidentificationError("malformed JPEG: ends inside a segment header")
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if end > n:
            raise DeidentificationError("malformed JPEG: segment runs past the end of the file")
        segment, payload = data[i:end], data[i + 4 : end]
        if marker == 0xDA:
            out.append(segment)
            i = _scan_end(data, end)
            out.append(data[end:i])
            continue
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00") and not exif_done:
            exif_done = True
            orientation = _exif_orientation(payload[6:])
            if orientation is not None:
                out.append(_minimal_exif(orientation))
        elif (
            (marker == 0xE0 and payload[:5] in (b"JFIF\x00", b"JFXX\x00"))
            or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"))
            or (marker == 0xEE and payload.startswith(b"Adobe"))
            or not (0xE0 <= marker <= 0xEF or marker == 0xFE)
        ):
            out.append(segment)
        i = end
    raise DeidentificationError("malformed JPEG: no end-of-image marker")


def _scan_end(data: bytes, i: int) -> int:
    """Index of the first marker after entropy-coded data (stuffed 0xFF00 and RSTn belong to the scan)."""
    n = len(data)
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= n:
            raise DeidentificationError("malformed JPEG: scan data runs to the end of the file")
        nxt = data[j + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
            i = j + 2
        elif nxt == 0xFF:
            i = j + 1
        else:
            return j


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation value from IFD0 of an EXIF TIFF block, or None if absent or unreadable."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for k in range(count):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[e : e + 2], order) == _ORIENTATION_TAG:
            value = int.from_bytes(tiff[e + 8 : e + 10], order)  # SHORT, left-justified in the field
            return value if 1 <= value <= 8 else None
    return None


def _minimal_exif(orientation: int) -> bytes:
    """An APP1 EXIF segment with a single IFD0 entry: Orientation (SHORT, count 1)."""
    tiff = (
        b"MM\x00\x2a"
        + (8).to_bytes(4, "big")
        + (1).to_bytes(2, "big")
        + _ORIENTATION_TAG.to_bytes(2, "big")
        + (3).to_bytes(2, "big")
        + (1).to_bytes(4, "big")
        + orientation.to_bytes(2, "big")
        + b"\x00\x00"
        + (0).to_bytes(4, "big")
    )
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
