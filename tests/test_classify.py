"""Keep/discard rules, the two-channel classifier network, its training and the stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from nanoseg.classify import (  # noqa: E402
    apply_rules,
    balanced_weights,
    classify_images,
    instance_scores,
    load_manual_samples,
    load_pair_samples,
    make_classifier,
    masked_bce,
    predict_keep_probability,
    sample_batch,
    train_classifier,
)
from nanoseg.config import build_config  # noqa: E402
from nanoseg.errors import NanosegError  # noqa: E402

torch.set_num_threads(1)


def _cfg(**kwargs):
    base = {"base_width": 4, "depth": 2, "tile_size_px": 48, "batch_size": 2, "steps": 4, "bf16": False,
            "score_threshold": 0.5}
    return build_config({"classify": {**base, **kwargs}}, profile="demo").classify


def _particles():
    return pd.DataFrame({
        "image": "a", "label": [1, 2, 3, 4, 5, 6, 7, 8],
        "area_px": [100, 5, 5000, 100, 100, 100, 100, 30],
        "solidity": [0.95, 0.95, 0.95, 0.6, 0.95, 0.95, 0.95, 0.95],
        "min_feret_px": [10.0, 2.0, 70.0, 10.0, 10.0, 10.0, 12.0, 4.5],
        "inscribed_diameter_px": [9.0, 2.0, 61.0, 7.0, 9.0, 9.0, 4.0, 4.0],
        "touches_border": [False, False, False, False, True, False, False, False],
        "mean_intensity": [0.8, 0.8, 0.8, 0.8, 0.8, 0.1, 0.8, 0.8],
    })


# ------------------------------------------------------------------ rules


def test_each_rule_records_its_reason():
    cfg = _cfg(method="rules", min_area_px=10, max_area_px=1000, min_solidity=0.8, min_mean_intensity=0.3)
    d = apply_rules(_particles(), cfg)
    assert list(d.columns) == ["image", "label", "score", "kept", "reason"]
    assert d["reason"].tolist() == ["", "area_below_min;min_feret_below_min", "area_above_max", "solidity_below_min",
                                    "touches_border", "intensity_below_min", "thin", "min_feret_below_min"]
    assert d["kept"].tolist() == [True] + [False] * 7
    # 12 px across and 4 px inscribed: 5 px with the grid's pixel of slack, above 0.4 x 12
    assert apply_rules(_particles(), cfg.model_copy(update={"min_inscribed_fraction": 0.4}))["reason"][6] == ""


def _disk_population(n, median_diameter_px, gsd, seed, image="a"):
    """Label image of ``n`` separate disks with log-normal diameters, none touching the border."""
    from skimage.draw import disk

    diameters = np.random.default_rng(seed).lognormal(np.log(median_diameter_px), np.log(gsd), n).clip(2.5, None)
    cell = int(np.ceil(diameters.max())) + 4
    cols = int(np.ceil(np.sqrt(n)))
    labels = np.zeros((cell * int(np.ceil(n / cols)) + 4, cell * cols + 4), np.int32)
    for i, d in enumerate(diameters):
        centre = (2 + cell * (i // cols) + cell / 2, 2 + cell * (i % cols) + cell / 2)
        labels[disk(centre, d / 2, shape=labels.shape)] = i + 1
    micrograph = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    return (image, labels, micrograph, None)


def test_default_rules_keep_the_small_particles_of_a_broad_population():
    item = _disk_population(150, 24, 1.8, seed=0)
    cfg = build_config().classify.model_copy(update={"method": "rules"})
    d = classify_images([item], cfg)
    assert len(d) == 150
    assert d["kept"].all(), d.loc[~d["kept"], "reason"].value_counts()


def test_counting_rule_states_what_ran():
    from nanoseg.classify import counting_rule

    rule = counting_rule(_cfg(method="network", min_solidity=0.8, intensity_threshold="li"), classifier_model="c.pt")
    names = [r["name"] for r in rule["rules"]]
    assert names == ["touches_border", "min_feret_below_min", "solidity_below_min", "thin", "intensity_below_li",
                     "score_below_threshold"]
    assert rule["rules"][2]["threshold"] == 0.8 and "solidity" in rule["rules"][2]["discards"]
    assert rule["classifier"] == {"ran": True, "model": "c.pt", "score_threshold": 0.5,
                                  "score_thresholds_by_area": None, "threshold_source": "set in the configuration"}
    assert rule["edge_particles_excluded"] and rule["partly_covered_excluded"]
    rules_only = counting_rule(_cfg(method="rules", exclude_border=False, min_inscribed_fraction=0, min_feret_px=0,
                                    min_area_px=30), with_micrographs=False)
    assert [r["name"] for r in rules_only["rules"]] == ["area_below_min"]
    assert not rules_only["edge_particles_excluded"] and not rules_only["partly_covered_excluded"]
    assert rules_only["classifier"]["ran"] is False
    assert counting_rule(_cfg(method="none"))["rules"] == []


def test_counting_rule_names_every_reason_the_rules_give():
    from nanoseg.classify import counting_rule

    cfg = _cfg(method="network", min_area_px=10, max_area_px=1000, min_solidity=0.8, min_mean_intensity=0.3,
               intensity_threshold="li")
    particles = _particles().assign(image_threshold=0.5)
    d = apply_rules(particles, cfg, scores=np.array([0.9, 0.4, 0.6, 0.6, 0.2, 0.6, 0.6, 0.6]))
    given = {r for reasons in d["reason"] for r in reasons.split(";") if r}
    stated = {r["name"] for r in counting_rule(cfg)["rules"]}
    assert given <= stated and len(given) >= 8


def test_rules_off_and_method_none_keep_everything():
    off = _cfg(method="rules", exclude_border=False, min_feret_px=0, min_inscribed_fraction=0)
    assert apply_rules(_particles(), off)["kept"].all()
    assert apply_rules(_particles(), _cfg(method="none", min_area_px=1000))["kept"].all()


def test_scores_and_rules_combine():
    cfg = _cfg(method="network", score_threshold=0.5, min_area_px=25, min_feret_px=0, min_inscribed_fraction=0)
    d = apply_rules(_particles(), cfg, scores=np.array([0.9, 0.4, 0.6, 0.6, 0.2, 0.6, 0.6, 0.6]))
    # the 5 px particle is also below the area rule
    assert d["reason"].tolist()[:2] == ["", "area_below_min;score_below_threshold"]
    assert d["reason"][4] == "touches_border;score_below_threshold"
    assert d["kept"].tolist() == [True, False, True, True, False, True, True, True]


def test_instance_scores_are_means_over_pixels():
    labels = np.zeros((10, 10), np.int32)
    labels[:5, :5] = 1
    labels[6:, 6:] = 4
    prob = np.zeros((10, 10), np.float32)
    prob[:5, :5] = 0.25
    prob[6:, 6:] = 0.75
    prob[6, 6] = 0.0
    np.testing.assert_allclose(instance_scores(prob, labels), [0.25, 0.75 * 15 / 16])


# ------------------------------------------------------------------ network


def test_classifier_forward_backward_tiny_input():
    net = make_classifier(_cfg())
    x = torch.rand(2, 2, 20, 28)  # not a multiple of 2**depth: the net pads and crops
    out = net(x)
    assert out.shape == (2, 1, 20, 28)
    target = torch.randint(0, 2, (2, 1, 20, 28)).float()
    loss = masked_bce(out, target, x[:, 1:2].round())
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert net.init_kwargs == {"in_channels": 2, "out_channels": 1, "base_width": 4, "depth": 2}


def test_masked_bce_ignores_background():
    logits = torch.tensor([[[[10.0, -10.0]]]])
    target = torch.tensor([[[[1.0, 1.0]]]])
    only_first = masked_bce(logits, target, torch.tensor([[[[1.0, 0.0]]]]))
    assert float(only_first) < 1e-3  # the wrong background pixel does not count


def test_masked_bce_balance_weighs_classes_equally():
    # three kept pixels predicted at 0.5, one discarded pixel predicted wrongly with high confidence
    logits = torch.tensor([[[[0.0, 0.0, 0.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 1.0, 1.0, 0.0]]]])
    weight = torch.ones_like(target)
    plain = float(masked_bce(logits, target, weight))
    balanced = float(masked_bce(logits, target, weight, balance=True))
    bce_half, bce_wrong = float(np.log(2)), 5.0 + float(np.log1p(np.exp(-5.0)))
    assert plain == pytest.approx((3 * bce_half + bce_wrong) / 4, rel=1e-5)
    assert balanced == pytest.approx((bce_half + bce_wrong) / 2, rel=1e-5)


def _synthetic_samples(n=3, size=64, seed=0):
    """Bright squares; the 'keep' target marks squares with odd size, a learnable pattern."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        image = rng.normal(0.2, 0.03, (size, size)).astype(np.float32)
        binary = np.zeros((size, size), np.uint8)
        keep = np.zeros((size, size), np.uint8)
        for r in range(2, size - 12, 14):
            for c in range(2, size - 12, 14):
                s = int(rng.integers(5, 11))
                binary[r:r + s, c:c + s] = 1
                image[r:r + s, c:c + s] += 0.6 if s % 2 else 0.3
                keep[r:r + s, c:c + s] = s % 2
        samples.append((np.clip(image, 0, 1), binary, keep))
    return samples


def test_sample_batch_shapes_and_weight():
    x, y, w = sample_batch(_synthetic_samples(), 48, 3, np.random.default_rng(0))
    assert x.shape == (3, 2, 48, 48) and y.shape == w.shape == (3, 1, 48, 48)
    np.testing.assert_array_equal(w, x[:, 1:2])
    assert set(np.unique(y)) <= {0.0, 1.0} and np.all(y <= w)  # keep only on particle pixels


def _size_confounded_sample(size=160):
    """Small squares all discarded, large ones mostly kept: size alone predicts the target."""
    image = np.full((size, size), 0.2, np.float32)
    binary = np.zeros((size, size), np.uint8)
    keep = np.zeros((size, size), np.uint8)
    for k, r in enumerate(range(2, size - 20, 24)):
        for j, c in enumerate(range(2, size - 20, 24)):
            small = (k + j) % 2 == 0
            s = 6 if small else 18
            binary[r:r + s, c:c + s] = 1
            image[r:r + s, c:c + s] = 0.8
            keep[r:r + s, c:c + s] = 0 if small else int(j != 1)
    return image, binary, keep


def test_size_balanced_weights_equalise_classes_within_each_size_bin():
    sample = _size_confounded_sample()
    image, binary, keep = sample
    (weight,) = balanced_weights([sample], n_bins=2)
    assert np.all(weight[binary == 0] == 0) and np.all(weight[binary > 0] > 0)
    from scipy import ndimage as ndi

    labels, n = ndi.label(binary)
    areas = ndi.sum_labels(np.ones_like(labels), labels, np.arange(1, n + 1))
    large = np.isin(labels, np.flatnonzero(areas > 100) + 1)
    kept_w = weight[large & (keep > 0)].sum()
    discarded_w = weight[large & (keep == 0) & (binary > 0)].sum()
    assert kept_w == pytest.approx(discarded_w, rel=1e-5)
    # The bin keeps its total weight: reweighting moves weight between classes, not between bins.
    assert weight[large].sum() == pytest.approx(large.sum(), rel=1e-5)
    # Small squares are all discarded: a bin with one class is left unweighted.
    np.testing.assert_allclose(weight[(binary > 0) & ~large], 1.0)


def test_size_balanced_weights_clip_rare_classes():
    sample = _size_confounded_sample()
    (weight,) = balanced_weights([sample], n_bins=2, max_weight=1.2)
    assert weight.max() <= 1.2 + 1e-6 and weight[weight > 0].min() >= 1 / 1.2 - 1e-6


@pytest.mark.parametrize("size_balance", [True, False])
def test_balanced_and_plain_training_runs(size_balance):
    samples = [_size_confounded_sample()]
    net, losses = train_classifier(samples, _cfg(size_balance=size_balance), steps=3)
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_training_resumes_from_checkpoint_exactly(tmp_path):
    samples = _synthetic_samples()
    cfg = _cfg(checkpoint_every=2)
    torch.manual_seed(0)
    _, full = train_classifier(samples, cfg, steps=4, seed=3, checkpoint=tmp_path / "a.pt")
    assert (tmp_path / "a.pt").is_file()  # written at step 2
    torch.manual_seed(0)
    _, resumed = train_classifier(samples, cfg, steps=4, seed=3, checkpoint=tmp_path / "a.pt")
    assert len(resumed) == 4
    np.testing.assert_allclose(resumed, full, rtol=1e-4)


def test_weight_average_is_what_training_returns_and_survives_a_resume(tmp_path):
    samples = _synthetic_samples()
    torch.manual_seed(0)
    last, _ = train_classifier(samples, _cfg(), steps=4, seed=3)
    torch.manual_seed(0)
    averaged, _ = train_classifier(samples, _cfg(ema_decay=0.5), steps=4, seed=3)
    # Same iterates (same seeds), but the returned weights are their average, not the last ones.
    assert any(not torch.equal(a, b) for a, b in zip(averaged.state_dict().values(), last.state_dict().values()))
    assert type(averaged) is type(last) and averaged.init_kwargs == last.init_kwargs  # saved like any net

    cfg = _cfg(ema_decay=0.5, checkpoint_every=2)
    torch.manual_seed(0)
    train_classifier(samples, cfg, steps=4, seed=3, checkpoint=tmp_path / "a.pt")  # checkpoint at step 2
    torch.manual_seed(0)
    resumed, _ = train_classifier(samples, cfg, steps=4, seed=3, checkpoint=tmp_path / "a.pt")
    for a, b in zip(resumed.state_dict().values(), averaged.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_training_step_runs():
    net, losses = train_classifier(_synthetic_samples(1), _cfg(bf16=True), steps=2)
    assert len(losses) == 2 and np.isfinite(losses).all()
    prob = predict_keep_probability(net, np.zeros((30, 30), np.float32), np.ones((30, 30), np.float32), bf16=True)
    assert prob.shape == (30, 30) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1


def _fixed_loss(net, batch):
    x, y, w = (torch.from_numpy(a) for a in batch)
    net.eval()
    with torch.no_grad():
        return float(masked_bce(net(x), y, w))


def test_few_steps_on_shared_class_masks_lower_the_loss(shared_data, tmp_path):
    # two images, linked into a temporary folder so only they are read
    for sub, suffix in (("sem", ""), ("masks", "_m"), ("classes", "_cm")):
        (tmp_path / sub).mkdir()
        for stem in ("1908248", "1908252"):
            (tmp_path / sub / f"{stem}{suffix}.tif").symlink_to(shared_data / sub / f"{stem}{suffix}.tif")
    samples = load_manual_samples(tmp_path / "sem", tmp_path / "masks", tmp_path / "classes")
    assert len(samples) == 2
    image, binary, keep = samples[0]
    assert image.shape == binary.shape == keep.shape == (704, 1024)  # cropped to the class masks' rows
    assert keep.sum() > 0 and np.all(keep <= binary)
    cfg = _cfg(tile_size_px=96, batch_size=4, learning_rate=3e-3)
    torch.manual_seed(0)
    net = make_classifier(cfg)
    held_out = sample_batch(samples, 96, 8, np.random.default_rng(123))
    before = _fixed_loss(net, held_out)
    net, losses = train_classifier(samples, cfg, steps=25, seed=1, net=net)
    after = _fixed_loss(net, held_out)
    assert after < before, (before, after)


# ------------------------------------------------------------------ data loading and the stage


def test_load_pair_samples(tmp_path):
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    binary = np.zeros((40, 40), np.uint8)
    binary[5:15, 5:15] = 1
    binary[20:30, 20:30] = 1
    whole = np.zeros_like(binary)
    whole[5:15, 5:15] = 1
    whole[0, 0] = 1  # outside a particle: must be dropped
    np.savez(tmp_path / "pair_0000.npz", image=image, instances=binary.astype(np.int32), binary=binary, whole=whole)
    (s_image, s_binary, s_keep), = load_pair_samples(tmp_path)
    assert s_keep.sum() == 100 and s_keep[0, 0] == 0
    np.savez(tmp_path / "pair_0001.npz", image=image, binary=binary)
    with pytest.raises(NanosegError, match=r"pair_0001.npz: missing key\(s\) whole"):
        load_pair_samples(tmp_path)
    with pytest.raises(NanosegError, match="nothing: no pair_"):
        load_pair_samples(tmp_path / "nothing")


def test_classify_images_network_and_rules():
    labels = np.zeros((48, 48), np.int32)
    labels[4:14, 4:14] = 1
    labels[20:30, 20:30] = 2
    labels[40:48, 0:8] = 3  # touches the border
    image = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    cfg = _cfg(method="network")
    net = make_classifier(cfg).eval()
    d = classify_images([("x", labels, image, None)], cfg, net=net)
    assert d["label"].tolist() == [1, 2, 3]
    assert d["score"].between(0, 1).all()
    assert "touches_border" in d.loc[2, "reason"]
    with pytest.raises(NanosegError, match="no classifier model was given"):
        classify_images([("x", labels, image, None)], cfg, net=None)


def test_intensity_rule_drops_faint_blobs_on_background():
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 64), np.int32)
    labels[10:22, 10:22] = 1  # a real, bright particle
    labels[40:52, 40:52] = 2  # background texture the net mistook for a particle
    image = rng.normal(0.15, 0.03, labels.shape).astype(np.float32)
    image[labels == 1] = 0.8
    image[labels == 2] += 0.05
    d = classify_images([("x", labels, image, None)], _cfg(method="rules", intensity_threshold="li"))
    assert d["kept"].tolist() == [True, False]
    assert d.loc[1, "reason"] == "intensity_below_li"
    off = classify_images([("x", labels, image, None)], _cfg(method="rules", intensity_threshold="none"))
    assert off["kept"].all()


def test_run_stage_trains_scores_and_writes(tmp_path):
    from nanoseg import nets
    from nanoseg.classify import run_stage
    from nanoseg.io import write_tiff
    from nanoseg.pipeline import STAGES, StageContext

    run = tmp_path / "run"
    for i, (image, binary, keep) in enumerate(_synthetic_samples(2)):
        (run / "pairs").mkdir(parents=True, exist_ok=True)
        np.savez(run / "pairs" / f"pair_{i:04d}.npz", image=image, binary=binary, whole=keep, instances=binary)
    image, binary, _ = _synthetic_samples(1, seed=5)[0]
    from skimage.measure import label

    write_tiff(tmp_path / "images" / "m1.tif", (image * 255).astype(np.uint8), pixel_size_nm=3.0)
    write_tiff(run / "adapt" / "labels" / "m1.tif", label(binary, connectivity=1).astype(np.uint16))  # what segment/adapt wrote
    cfg = build_config({"data": {"images": str(tmp_path / "images"), "info_bar_rows": 0},
                        "classify": {"base_width": 4, "depth": 2, "tile_size_px": 48, "batch_size": 2, "steps": 3}},
                       profile="demo")
    stage = next(s for s in STAGES if s.name == "classify")
    (run / "classify").mkdir()
    run_stage(StageContext(config=cfg, run_dir=run, stage=stage))
    # the stage trains and calibrates only; the measure stage decides every particle with its model
    assert sorted(p.name for p in (run / "classify").iterdir()) == ["model.pt"]
    net, meta = nets.load(run / "classify" / "model.pt")
    assert meta["steps"] == 3 and net.init_kwargs["in_channels"] == 2
    # the default 'auto' threshold: one of the two pairs held out, the threshold calibrated on it and saved
    assert cfg.classify.score_threshold == "auto"
    assert meta["trained_images"] == 1 and meta["calibration"]["held_out"] and meta["calibration"]["n_images"] == 1
    assert meta["score_threshold"] == meta["calibration"]["threshold"]
    from nanoseg.measure import run_stage as measure_stage

    measure = next(s for s in STAGES if s.name == "measure")
    (run / "measure").mkdir()
    measure_stage(StageContext(config=cfg, run_dir=run, stage=measure))
    decisions = pd.read_csv(run / "measure" / "decisions.csv", keep_default_na=False)
    assert list(decisions.columns) == ["image", "label", "score", "kept", "reason"]
    assert len(decisions) == int(label(binary, connectivity=1).max())
    assert set(decisions["image"]) == {"m1"}
    scored = decisions[decisions["reason"] == ""]
    assert (scored["score"] > meta["score_threshold"]).all()
    summary = json.loads((run / "measure" / "summary.json").read_text())
    assert summary["counting_rule"]["classifier"]["ran"] and summary["warnings"] == []


class _IntensityNet(torch.nn.Module):
    """Stands in for a trained classifier: keep logit = gain * (intensity - centre), so its
    scores are known; ``centre`` shifts them like a differently trained network's."""

    def __init__(self, centre):
        super().__init__()
        self.centre = centre

    def forward(self, x):
        return 20.0 * (x[:, :1] - self.centre)


def test_calibrated_threshold_follows_shifted_scores():
    from nanoseg.classify import calibrate_threshold

    samples = _synthetic_samples(2)  # kept squares are brighter (0.8) than discarded ones (0.5)
    for centre in (0.45, 0.65, 0.85):  # 0.85: every score below 0.5, a fixed 0.5 would keep nothing
        cal = calibrate_threshold(_IntensityNet(centre).eval(), samples)
        assert cal["youden_j"] == pytest.approx(1.0)
        assert cal["sensitivity"] == 1.0 and cal["specificity"] == 1.0
        kept = torch.sigmoid(torch.tensor(20.0 * (0.8 - centre))).item()
        discarded = torch.sigmoid(torch.tensor(20.0 * (0.5 - centre))).item()
        assert discarded < cal["threshold"] < kept
    assert cal["n_images"] == 2 and cal["n_particles"] == 2 * 16


def test_calibration_with_one_kind_of_particle_falls_back_to_half():
    from nanoseg.classify import calibrate_threshold

    samples = [(image, binary, binary.copy()) for image, binary, _ in _synthetic_samples(1)]
    cal = calibrate_threshold(_IntensityNet(0.5).eval(), samples)
    assert cal["threshold"] == 0.5 and cal["youden_j"] is None and cal["n_particles"] == 16


def test_fit_classifier_holds_out_the_calibration_pairs():
    from nanoseg.classify import fit_classifier

    samples = _synthetic_samples(4)
    net, meta = fit_classifier(samples, _cfg(score_threshold="auto", calibration_fraction=0.25, steps=2))
    assert meta["trained_images"] == 3 and meta["steps"] == 2
    assert meta["calibration"]["held_out"] and meta["calibration"]["n_images"] == 1
    assert 0 < meta["score_threshold"] < 1 and meta["score_threshold"] == meta["calibration"]["threshold"]
    _, fixed = fit_classifier(samples, _cfg(score_threshold=0.3, steps=2))
    assert fixed["trained_images"] == 4 and fixed["score_threshold"] == 0.3 and "calibration" not in fixed
    _, alone = fit_classifier(samples[:1], _cfg(score_threshold="auto", steps=2))  # nothing to hold out
    assert alone["trained_images"] == 1 and not alone["calibration"]["held_out"]


def test_resolve_threshold_prefers_the_configuration(caplog):
    from nanoseg.classify import resolve_threshold

    assert resolve_threshold(_cfg(score_threshold=0.3), {"score_threshold": 0.7}).score_threshold == 0.3
    assert resolve_threshold(_cfg(score_threshold="auto"), {"score_threshold": 0.7}).score_threshold == 0.7
    assert resolve_threshold(_cfg(score_threshold="auto"), {}).score_threshold == 0.5
    assert "no calibrated score threshold" in caplog.text
    with pytest.raises(NanosegError, match="resolve_threshold"):
        apply_rules(_particles(), _cfg(method="network", score_threshold="auto"), scores=np.full(6, 0.9))


def test_counting_rule_states_the_calibration():
    from nanoseg.classify import counting_rule

    cal = {"threshold": 0.31, "youden_j": 0.7, "n_particles": 120, "n_images": 20, "held_out": True}
    rule = counting_rule(_cfg(method="network", score_threshold=0.31), calibration=cal)
    assert rule["classifier"]["score_threshold"] == 0.31
    assert rule["classifier"]["threshold_source"] == ("calibrated on 120 particles of 20 held-out fake pairs, "
                                                     "Youden's J 0.700")


# ------------------------------------------------------------------ thresholds by particle area


_OVERLAPPING = {(4, True): 0.6, (4, False): 0.45, (9, True): 0.8, (9, False): 0.65}


def _two_size_samples(n=2, size=120, brightness=_OVERLAPPING):
    """Squares of side 4 (small) and 9 (large), whole and partial, brightness by size and class:
    by default small whole 0.6 lies below large partial 0.65, so no single score threshold
    separates all."""
    samples = []
    for i in range(n):
        image = np.full((size, size), 0.1, np.float32)
        binary = np.zeros((size, size), np.uint8)
        keep = np.zeros((size, size), np.uint8)
        for k, r in enumerate(range(2, size - 11, 12)):
            for j, c in enumerate(range(2, size - 11, 12)):
                side = 4 if (k + j) % 2 else 9
                whole = (k + i) % 2 == 0
                binary[r:r + side, c:c + side] = 1
                keep[r:r + side, c:c + side] = whole
                image[r:r + side, c:c + side] = brightness[side, whole]
        samples.append((image, binary, keep))
    return samples


def test_calibration_by_area_gives_small_particles_their_own_threshold():
    from nanoseg.classify import area_thresholds, calibrate_threshold

    net = _IntensityNet(0.6).eval()
    samples = _two_size_samples()
    one = calibrate_threshold(net, samples)
    assert "by_area" not in one and one["youden_j"] < 1.0
    two = calibrate_threshold(net, samples, n_bins=2)
    assert two["threshold"] == one["threshold"]
    (start_small, small), (start_large, large) = two["by_area"]
    assert start_small == 0 and 16 < start_large <= 81
    score = lambda v: torch.sigmoid(torch.tensor(20.0 * (v - 0.6))).item()  # noqa: E731
    assert score(0.45) < small < score(0.6) < two["threshold"]
    assert large == pytest.approx(two["threshold"])
    # separable overall, but the large squares alone would raise their threshold: a bin only lowers it
    separable = _two_size_samples(brightness={(4, True): 0.6, (4, False): 0.45, (9, True): 0.8, (9, False): 0.58})
    cal = calibrate_threshold(net, separable, n_bins=2)
    assert cal["youden_j"] == pytest.approx(1.0) and score(0.58) < cal["threshold"] < score(0.6)
    (_, small_sep), (_, large_sep) = cal["by_area"]
    assert small_sep < cal["threshold"] and large_sep == pytest.approx(cal["threshold"])
    assert area_thresholds(np.array([16, 81]), two["by_area"]).tolist() == [small, large]
    # too few particles of a kind in a bin: the overall threshold
    few = calibrate_threshold(net, _two_size_samples(1, size=40), n_bins=2)  # 9 particles
    assert [t for _, t in few["by_area"]] == [few["threshold"]] * 2


def test_area_thresholds_decide_by_each_particles_area():
    rules_off = {"min_feret_px": 0, "min_inscribed_fraction": 0, "exclude_border": False,
                 "intensity_threshold": "none"}
    cfg = _cfg(method="network", score_threshold=0.5, score_thresholds_by_area=[[0, 0.7], [1000, 0.2]], **rules_off)
    d = apply_rules(_particles(), cfg, scores=np.full(8, 0.5))
    assert d["kept"].tolist() == [False, False, True, False, False, False, False, False]  # only the 5000 px one
    assert apply_rules(_particles(), _cfg(method="network", score_threshold=0.4, **rules_off),
                       scores=np.full(8, 0.5))["kept"].all()


def test_resolve_threshold_takes_the_models_area_thresholds_unless_configured():
    from nanoseg.classify import counting_rule, resolve_threshold

    meta = {"score_threshold": 0.4, "calibration": {"threshold": 0.4, "by_area": [[0.0, 0.3], [200.0, 0.5]]}}
    cfg = resolve_threshold(_cfg(score_threshold="auto", method="network"), meta)
    assert cfg.score_threshold == 0.4 and cfg.score_thresholds_by_area == [(0.0, 0.3), (200.0, 0.5)]
    assert counting_rule(cfg)["classifier"]["score_thresholds_by_area"] == [[0.0, 0.3], [200.0, 0.5]]
    own = resolve_threshold(_cfg(score_threshold="auto", score_thresholds_by_area=[[0, 0.9]]), meta)
    assert own.score_thresholds_by_area == [(0.0, 0.9)]
    assert resolve_threshold(_cfg(score_threshold=0.6), meta).score_thresholds_by_area is None
    with pytest.raises(NanosegError, match="must start at 0 and rise"):
        _cfg(score_thresholds_by_area=[[0, 0.3], [0, 0.5]])
