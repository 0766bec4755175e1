"""What every DICOM RT object rtgrid writes shares: file meta, SOP common, the CT's patient and
study (so the object files under them), a new RT series, and rtgrid as the equipment."""

from __future__ import annotations

import datetime as _dt

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rtgrid.engines.imaging.volume import ImageSeries

MANUFACTURER = "rtgrid"


def new_rt_dataset(series: ImageSeries, sop_class_uid: str, modality: str, sop_instance_uid: str | None = None) -> Dataset:
    """A dataset with the modules every RT object of ``series`` starts from.

    Parameters
    ----------
    series : ImageSeries
        The CT the object belongs to: its patient and study are copied.
    sop_class_uid : str
        RT Structure Set / RT Dose / RT Plan Storage.
    modality : str
        ``RTSTRUCT``, ``RTDOSE`` or ``RTPLAN``.
    sop_instance_uid : str, optional
        The object's UID when it was generated earlier (to be referenced); a new one otherwise.

    Returns
    -------
    pydicom.Dataset
        With file meta (explicit VR little endian), SOP Common, Patient, General Study, RT Series
        (new series UID, number 1) and General Equipment filled in.
    """
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    uid = sop_instance_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = uid
    ds.PatientName = series.patient_name
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = series.patient_birth_date
    ds.PatientSex = series.patient_sex
    ds.StudyInstanceUID = series.study_instance_uid
    ds.StudyDate = series.study_date
    ds.StudyTime = series.study_time
    ds.ReferringPhysicianName = series.referring_physician_name
    ds.StudyID = series.study_id
    ds.AccessionNumber = series.accession_number
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    return ds
