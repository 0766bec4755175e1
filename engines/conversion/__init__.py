"""Conversion of a standard plan to a target device (rtgrid pipeline stage 4).

Modules
-------
device
    Device files (machine file + ``device`` section: MU limits, jaws, leaf over-travel) and their loader.
coincidence
    Scores of the source (water doses) and MLC of a device against the standard machine.
leaf_grid
    A device's own beamlets (rows = leaf pairs) and their dose influence; standard fluence resampled onto them.
mimic
    Dose mimicking: device fluence reproducing the standard dose and DVHs under the order's goals.
segment
    Step-and-shoot segments, delivery violations, aperture open fractions.
sequencing
    Leaf sequencing (sweep, interdigitation constraint) and NNLS refinement of segment MU.
deliverability
    Every reason a beam's segments cannot be delivered on a device.
segment_dose
    Dose recomputed from the segments' apertures with the device's full kernel.
standard_plan
    The standard plan as an artifact (npz + JSON).
convert
    The chain coincidence -> reuse | mimic -> sequence -> refine -> dose -> goals.
"""
