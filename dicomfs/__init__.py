"""dicomfs: a DICOM archive that you use as a filesystem."""

__version__ = "0.1.0"
