"""DICOM stage: discovery, series splitting, classification, de-identification
and conversion to NIfTI (RAS+ affines) with BIDS names."""
