"""Dose prediction engine: inputs, OpenKBP scores against hand-computed values, a tiny training
run on two real OpenKBP patients, and the package's content hash."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rtgrid.engines.dose_prediction import (
    DosePackageError, build_inputs, dose_score, dvh_metrics, dvh_score, load_dose_package, model_spacing, predict_dose,
    predict_patient_dose, save_dose_package,
)
from rtgrid.engines.dose_prediction.inputs import (
    BODY_CHANNEL, DISTANCE_CHANNELS, DISTANCE_RANGE_MM, DoseInputError, N_CHANNELS, N_LEVELS, OAR_CHANNELS,
    mirror_inputs, target_distances,
)
from rtgrid.engines.dose_prediction.model import DoseUNet
from rtgrid.engines.dose_prediction.train import OPENKBP_PRESCRIPTIONS_GY, DoseTrainConfig, _widened, train_dose_model
from rtgrid.engines.imaging.openkbp import load_openkbp_patient
from tests.conftest import require_shared


def test_inputs_higher_level_wins_and_channels_in_order():
    ct = np.full((2, 3, 3), 40, dtype=np.int16)
    ct[0, 0, 0] = -3000  # windowed to -1000 HU
    body = np.ones(ct.shape, bool)
    high = np.zeros(ct.shape, bool)
    high[:, 1, 1] = True
    low = np.zeros(ct.shape, bool)
    low[:, 1, :] = True
    cord = np.zeros(ct.shape, bool)
    cord[1, 2, 2] = True
    x = build_inputs(ct, body, {"SpinalCord": cord, "NotAnOrgan": cord}, [(56.0, low), (70.0, high)], (2.0, 2.0, 3.0))
    assert x.shape == (N_CHANNELS, 2, 3, 3)
    assert x[0, 0, 0, 0] == pytest.approx(-1.0) and x[0, 1, 1, 1] == pytest.approx(0.04)
    assert x[1, 0, 1, 1] == pytest.approx(1.0) and x[1, 0, 1, 0] == 0.0  # 70 Gy level first
    assert x[2, 0, 1, 1] == 0.0 and x[2, 0, 1, 0] == pytest.approx(0.8)  # 56 Gy only where 70 is not
    assert x[1 + N_LEVELS + OAR_CHANNELS.index("SpinalCord")].sum() == 1
    assert x[BODY_CHANNEL].all()
    # Distances follow the levels' order: 2 mm (one column) from the 70 Gy target, inside the 56.
    assert x[DISTANCE_CHANNELS, 0, 1, 0] == pytest.approx(2.0 / DISTANCE_RANGE_MM[1])
    assert x[DISTANCE_CHANNELS + 1, 0, 1, 0] < 0 and (x[DISTANCE_CHANNELS + 2] == 1.0).all()  # no third level
    with pytest.raises(DoseInputError, match="at most 3"):
        build_inputs(ct, body, {}, [(70.0, high)] * 4, (2.0, 2.0, 3.0))
    with pytest.raises(DoseInputError, match="shape"):
        build_inputs(ct, body, {"Larynx": np.zeros((1, 3, 3), bool)}, [(70.0, high)], (2.0, 2.0, 3.0))
    with pytest.raises(DoseInputError, match="not a positive dose"):
        build_inputs(ct, body, {}, [(0.0, high)], (2.0, 2.0, 3.0))


def test_target_distances_are_signed_mm_on_an_anisotropic_grid_and_clipped():
    # Columns 1 mm, rows 2 mm, slices 5 mm; a target of one voxel's column run at slice 10.
    target = np.zeros((40, 30, 300), bool)
    target[10, 15, 100:200] = True
    d = target_distances([target], (1.0, 2.0, 5.0)) * DISTANCE_RANGE_MM[1]
    assert d.shape == (N_LEVELS, 40, 30, 300)
    assert d[0, 13, 15, 150] == pytest.approx(15.0)  # three slices away
    assert d[0, 10, 20, 150] == pytest.approx(10.0)  # five rows away
    assert d[0, 10, 15, 90] == pytest.approx(10.0)  # ten columns beyond the run's end
    assert d[0, 11, 16, 205] == pytest.approx(np.sqrt(25.0 + 4.0 + 36.0))
    assert d[0, 10, 15, 150] == pytest.approx(-2.0)  # inside: one row (2 mm) to the nearest voxel outside
    assert d[0, 39, 15, 150] == pytest.approx(DISTANCE_RANGE_MM[1])  # 145 mm: clipped
    assert (d[1:] == DISTANCE_RANGE_MM[1]).all()  # absent levels are as far as the range goes
    # A target thick enough to be deeper than the range inside is clipped there too.
    block = np.zeros((30, 40, 40), bool)
    block[:, 5:35, 5:35] = True
    assert target_distances([block], (3.0, 3.0, 3.0))[0].min() == pytest.approx(DISTANCE_RANGE_MM[0] / DISTANCE_RANGE_MM[1])


def test_a_widened_network_predicts_as_before_and_older_inputs_are_refused():
    # A network of a release before the distance channels, widened with zero weights for them:
    # the same dose whatever the new channels hold.
    context = 3
    old = DoseUNet(DISTANCE_CHANNELS, context=context, base=4, depth=2, pool=2).eval()
    new = DoseUNet(N_CHANNELS, context=context, base=4, depth=2, pool=2).eval()
    state = old.state_dict()
    state[DoseUNet.FIRST_CONV_WEIGHT] = _widened(state[DoseUNet.FIRST_CONV_WEIGHT], DISTANCE_CHANNELS, context)
    new.load_state_dict(state)
    rng = np.random.default_rng(1)
    x = rng.random((N_CHANNELS, 4, 16, 16)).astype(np.float32)
    body = np.ones((4, 16, 16), bool)
    before = predict_dose(old, x[:DISTANCE_CHANNELS], body, context=context, device="cpu")
    assert np.allclose(predict_dose(new, x, body, context=context, device="cpu"), before, atol=1e-5)
    with pytest.raises(DoseInputError, match=f"takes {DISTANCE_CHANNELS} input channels per slice"):
        predict_dose(old, x, body, context=context, device="cpu")


def test_mirror_inputs_reverses_columns_and_swaps_the_parotids():
    ct = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    body = np.ones(ct.shape, bool)
    right, left, cord = (np.zeros(ct.shape, bool) for _ in range(3))
    right[:, 1, 0] = True  # the patient's right: low columns here
    left[:, 1, 3] = True
    cord[:, 2, 1] = True
    x = build_inputs(ct, body, {"Parotid_R": right, "Parotid_L": left, "SpinalCord": cord}, [(70.0, right)],
                     (1.0, 1.0, 1.0))
    m = mirror_inputs(x)
    channel = {name: 1 + N_LEVELS + OAR_CHANNELS.index(name) for name in ("Parotid_R", "Parotid_L", "SpinalCord")}
    assert (m[0] == x[0][..., ::-1]).all() and (m[1] == x[1][..., ::-1]).all()  # CT and the level: mirrored
    assert (m[DISTANCE_CHANNELS:] == x[DISTANCE_CHANNELS:, ..., ::-1]).all()  # so are the distances
    assert (m[channel["SpinalCord"]] == cord[..., ::-1]).all()
    # The mirrored patient's right parotid lies where the left one was mirrored to (column 0).
    assert m[channel["Parotid_R"], :, 1, 0].all() and m[channel["Parotid_R"]].sum() == 2
    assert m[channel["Parotid_L"], :, 1, 3].all() and m[channel["Parotid_L"]].sum() == 2
    assert (mirror_inputs(m) == x).all()


def test_dose_score_by_hand():
    reference = np.array([[[10.0, 20.0], [30.0, 0.0]]])
    predicted = np.array([[[12.0, 17.0], [30.0, 50.0]]])
    mask = np.array([[[True, True], [True, False]]])
    # |2| + |-3| + 0 over three voxels; the voxel outside the mask does not count.
    assert dose_score(predicted, reference, mask) == pytest.approx(5.0 / 3.0)
    with pytest.raises(ValueError, match="empty"):
        dose_score(predicted, reference, np.zeros_like(mask))


def test_dvh_criteria_and_score_by_hand():
    dose = np.arange(1.0, 101.0).reshape(1, 10, 10)  # 1 ... 100 Gy
    ptv = np.ones(dose.shape, bool)
    parotid = np.zeros(dose.shape, bool)
    parotid[0, 0, :4] = True  # 1, 2, 3, 4 Gy
    cord = np.zeros(dose.shape, bool)
    cord[0, 9, :] = True  # 91 ... 100 Gy
    masks = {"PTV70": ptv, "Parotid_L": parotid, "SpinalCord": cord, "Unscored": cord}
    # 1000 mm3 voxels: 0.1 cc is one voxel of the cord's ten, its 90th percentile (linear): 99.1 Gy.
    metrics = dvh_metrics(dose, masks, voxel_volume_mm3=1000.0)
    assert metrics == pytest.approx({"PTV70 D99": 1.99, "PTV70 D95": 5.95, "PTV70 D1": 99.01,
                                     "Parotid_L mean": 2.5, "SpinalCord D0.1cc": 99.1})
    # Every dose 2 Gy higher: each criterion moves by 2 Gy.
    assert dvh_score(dose + 2.0, dose, masks, 1000.0) == pytest.approx(2.0)
    # Only the parotid changes (by 4 Gy) : one criterion of five.
    shifted = dose.copy()
    shifted[parotid] += 4.0
    assert dvh_metrics(shifted, {"Parotid_L": parotid}, 1000.0)["Parotid_L mean"] == pytest.approx(6.5)
    assert dvh_score(shifted, dose, {"Parotid_L": parotid, "SpinalCord": cord}, 1000.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no structure"):
        dvh_score(dose, dose, {"Unscored": cord}, 1000.0)


def test_tiny_training_on_two_patients_learns_and_packages(tmp_path):
    openkbp = require_shared("openkbp")
    config = DoseTrainConfig(str(openkbp / "train"), str(openkbp / "validation"), train_patients=2, select_patients=1,
                             select_every=40, final_val_patients=1, max_iterations=40, max_minutes=2.0, batch=4,
                             lr=5e-3, base=4, depth=3, log_every=10)
    trained = train_dose_model(config, name="tiny", version="0")
    losses = np.array(trained.losses)
    assert len(losses) == 40
    assert losses[-10:].mean() < 0.7 * losses[:5].mean(), losses
    assert trained.card["validation"]["patients"] == 1 and trained.card["training"]["steps_done"] == 40
    content_hash = save_dose_package(tmp_path / "pkg", trained.model, trained.card)
    model, card, loaded_hash = load_dose_package(tmp_path / "pkg")
    assert loaded_hash == content_hash and card["name"] == "tiny"
    x = np.zeros((N_CHANNELS, 3, 32, 32), np.float32)
    body = np.ones((3, 32, 32), bool)
    body[0] = False
    dose = predict_dose(model, x, body, context=card["architecture"]["context"])
    assert dose.shape == (3, 32, 32) and (dose[0] == 0).all() and (dose >= 0).all()
    # A warm restart starts from the package's weights (its first loss is the first run's last
    # level, not a fresh start's) and the card names it; another architecture is refused.
    again = train_dose_model(dataclasses.replace(config, max_iterations=5, select_every=5, flip_lr_probability=0.5,
                                                 init_package=str(tmp_path / "pkg")), name="tiny", version="1")
    assert again.losses[0] < 0.7 * losses[:5].mean(), (again.losses, losses[:5])
    assert again.card["training"]["initial_package"]["sha256"] == content_hash
    # Trained on mirrored patients too, it predicts with each patient's mirror image: the dose of
    # a mirrored patient is then exactly the mirrored dose (not so for a single prediction).
    assert again.card["test_time_mirror"] is True and "test_time_mirror" not in trained.card
    rng = np.random.default_rng(0)
    x = (rng.random((N_CHANNELS, 5, 32, 32)) > 0.5).astype(np.float32)
    body = np.ones((5, 32, 32), bool)
    context = card["architecture"]["context"]
    for mirror, equal in ((True, True), (False, False)):
        dose = predict_dose(again.model, x, body, context=context, mirror=mirror)
        of_mirrored = predict_dose(again.model, mirror_inputs(x), body, context=context, mirror=mirror)
        assert np.allclose(of_mirrored, dose[..., ::-1], rtol=1e-5, atol=1e-5) is equal
    with pytest.raises(ValueError, match="init package"):
        train_dose_model(dataclasses.replace(config, base=8, init_package=str(tmp_path / "pkg")))
    # A package from before the distance channels is widened and trained on.
    narrow_card = {**trained.card, "architecture": {**trained.card["architecture"], "channels": DISTANCE_CHANNELS}}
    narrow = DoseUNet(**narrow_card["architecture"])
    narrow_hash = save_dose_package(tmp_path / "narrow", narrow, narrow_card)
    widened = train_dose_model(dataclasses.replace(config, max_iterations=2, select_every=2,
                                                   init_package=str(tmp_path / "narrow")), name="tiny", version="2")
    assert widened.card["architecture"]["channels"] == N_CHANNELS
    assert widened.card["training"]["initial_package"]["sha256"] == narrow_hash
    # An edited card no longer matches its hash.
    card_path = tmp_path / "pkg" / "card.json"
    edited = json.loads(card_path.read_text())
    edited["validation"]["dose_score_gy"] = 0.1
    card_path.write_text(json.dumps(edited))
    with pytest.raises(DosePackageError, match="content hash"):
        load_dose_package(tmp_path / "pkg")


def test_model_spacing_keeps_axes_the_model_knows():
    assert model_spacing((0.98, 0.98, 2.5)) == (3.906, 3.906, 2.5)
    assert model_spacing((4.0, 4.0, 1.25)) == (4.0, 4.0, 3.0)
    assert model_spacing((3.906, 3.906, 2.5)) == (3.906, 3.906, 2.5)


def test_structures_reach_the_model_grid_by_the_fraction_they_cover_and_thin_targets_stay():
    from rtgrid.engines.dose_prediction.predict import _on_model_grid

    ct = np.zeros((6, 40, 40), np.int16)
    body = np.zeros(ct.shape, bool)
    body[:, :, :20] = True  # the left half: whole coarse voxels (5 of 10 columns of 4 mm)
    line = np.zeros(ct.shape, bool)
    line[:, 21, 8:32] = True  # 1 mm thick: a quarter of a 4 mm voxel at most
    block = np.zeros(ct.shape, bool)
    block[:, 4:16, 4:16] = True
    _, coarse_body, oars, targets, spacing = _on_model_grid(
        ct, body, {"SpinalCord": line, "Larynx": block, "PTV56": block}, [(70.0, line), (56.0, block)], (1.0, 1.0, 3.0))
    assert set(oars) == {"SpinalCord", "Larynx"}  # structures without a channel are not resampled
    assert spacing == pytest.approx((4.0, 4.0, 3.0)) and coarse_body.shape == (6, 10, 10)
    assert coarse_body[:, :, :5].all() and not coarse_body[:, :, 5:].any()
    assert oars["Larynx"][:, 1:4, 1:4].all() and oars["Larynx"].sum() == 6 * 9
    assert not oars["SpinalCord"].any()  # an organ that thin is lost at 4 mm...
    assert targets[0][1].any() and targets[0][1][:, 5, 2:8].all()  # ...a target is not


def test_a_hospital_ct_is_predicted_on_the_grid_the_model_knows():
    # A real patient's slab brought to a hospital CT's 1 mm across: predicted on that grid as it
    # is, the network sees anatomy four times its size; resampled, it scores as on the OpenKBP grid.
    from scipy import ndimage

    patient = load_openkbp_patient(require_shared("openkbp/validation") / "pt_202.npz")
    model, card, _ = load_dose_package()
    context = card["architecture"]["context"]
    centre = int(np.flatnonzero(patient.masks["PTV70"].any(axis=(1, 2))).mean())
    keep = slice(centre - 12, centre + 12)
    spacing = tuple(patient.volume.spacing_mm)
    ct, body, dose_gy = patient.volume.voxels[keep], patient.possible_dose_mask[keep], patient.dose_gy[keep]
    masks = {name: mask[keep] for name, mask in patient.masks.items()}
    levels = [(dose, masks[name]) for name, dose in OPENKBP_PRESCRIPTIONS_GY.items() if name in masks]
    factor = spacing[0] / 1.0

    def fine(a: np.ndarray, order: int) -> np.ndarray:
        return ndimage.zoom(a.astype(np.float32), (1, factor, factor), order=order)

    def back(d: np.ndarray) -> np.ndarray:
        return ndimage.zoom(d, (1, ct.shape[1] / d.shape[1], ct.shape[2] / d.shape[2]), order=1) * body

    fine_body = fine(body, 0) > 0
    fine_masks = {name: fine(mask, 0) > 0 for name, mask in masks.items()}
    fine_levels = [(dose, fine_masks[name]) for name, dose in OPENKBP_PRESCRIPTIONS_GY.items() if name in masks]
    fine_spacing = (spacing[0] / factor, spacing[1] / factor, spacing[2])
    on_grid = predict_patient_dose(model, ct, body, masks, levels, spacing, context=context, device="cpu")
    assert np.array_equal(on_grid, predict_dose(model, build_inputs(ct, body, masks, levels, spacing), body,
                                                context=context, device="cpu"))
    as_is = predict_dose(model, build_inputs(fine(ct, 1), fine_body, fine_masks, fine_levels, fine_spacing), fine_body,
                         context=context, device="cpu")
    resampled = predict_patient_dose(model, fine(ct, 1), fine_body, fine_masks, fine_levels, fine_spacing,
                                     context=context, device="cpu")
    assert resampled.shape == fine_body.shape and (resampled[~fine_body] == 0).all()
    scores = {name: dose_score(d, dose_gy, body) for name, d in
              (("on_grid", on_grid), ("as_is", back(as_is)), ("resampled", back(resampled)))}
    assert scores["resampled"] < scores["on_grid"] + 0.4 < scores["as_is"] - 1.0, scores
