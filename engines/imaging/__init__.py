"""Image intake (DICOM files to validated volumes), the CT series writer and the shared geometry types."""
