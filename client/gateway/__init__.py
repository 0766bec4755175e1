"""``rtgrid gateway``: the DICOM node at the hospital (receive by C-STORE, run on the grid, push
results back by C-STORE). See :mod:`.service` for the flow and :mod:`.spool` for the folder."""
