"""Reading CTs and label maps that are not DICOM uploads (NIfTI files, or DICOM folders read by
ITK) for training: ``rtgrid train-seg`` cases given as ``"ct"`` + ``"labels"``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtgrid.engines.imaging.volume import Volume


def read_image_volume(path: str | Path) -> Volume:
    """A NIfTI file or a DICOM series folder as a :class:`Volume` (through SimpleITK).

    Parameters
    ----------
    path : str or Path
        A file ITK reads (``.nii.gz``, ``.nrrd``, ...) or a folder holding one DICOM series.

    Returns
    -------
    Volume
        Voxels ``[k, j, i]`` with the image's LPS origin, spacing and direction.

    Raises
    ------
    FileNotFoundError
        A folder without a DICOM series.
    """
    import SimpleITK as sitk  # here: only cases given as NIfTI or ITK folders need it (a heavy import)

    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise FileNotFoundError(f"no DICOM series in {path}")
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    return Volume(
        sitk.GetArrayFromImage(image),
        np.array(image.GetOrigin()),
        np.array(image.GetSpacing()),
        np.array(image.GetDirection()).reshape(3, 3),
    )
