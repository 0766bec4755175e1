"""Photon dose: the standard 6 MV machine model, HU to density, beam geometry and the pencil-beam
dose influence matrix (voxels x beamlets, sparse CSR, float32)."""
