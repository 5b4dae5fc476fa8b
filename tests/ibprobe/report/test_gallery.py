"""Gallery: layout from synthetic samples (ibprobe.report.gallery), decoder discovery and selection errors, and end to end on a tiny run."""
from __future__ import annotations

import numpy as np
import pytest

from ibprobe.cli import main
from ibprobe.config import AnalysisConfig
from ibprobe.errors import DataError, UserError
from ibprobe.jobs import JobSpec, write_job_index
from ibprobe.report.gallery import _to_display, gallery_figure, save_gallery
from ibprobe.rundir.files import atomic_write_json
from ibprobe.sample import GalleryData, GalleryRow, choose_images, find_decoders, sample_gallery, stack_galleries


def _data(n=3, k=2, rows=(("layer1", 0, 0.0), ("layer1", 115, 5.0), ("layer2.0.relu", 9, 9 / 23)), c=1, levels=17,
          seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, levels, (n, c, 8, 8)).astype(np.uint8)
    grows = [GalleryRow(None, None, rng.integers(0, levels, (n, k, c, 8, 8)).astype(np.uint8))]
    grows += [GalleryRow(l, s, rng.integers(0, levels, (n, k, c, 8, 8)).astype(np.uint8), epoch=e)
              for l, s, e in rows]
    return GalleryData(images, np.array([7, 11, 42][:n]), levels, grows, np.array([1, 2, 3][:n]),
                       [f"class{i}" for i in range(5)])


def test_gallery_figure_layout_and_titles():
    data = _data()
    fig = gallery_figure(data)
    n, k, r = 3, 2, 4
    assert len(fig.axes) == r * n * (k + 1)
    assert sum(ax.get_gid() == "original" for ax in fig.axes) == r * n
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["q(x), unconditional", "layer1 @ epoch 0", "layer1 @ epoch 5 (step 115)",
                      "layer2.0.relu @ epoch 0.391 (step 9)"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == (["original"] + [f"sample {j}" for j in range(1, k + 1)]) * n
    image_titles = [t.get_text() for t in fig.texts if t.get_gid() == "image_title"]
    assert image_titles == ["test image 7 (class1)", "test image 11 (class2)", "test image 42 (class3)"]
    # the third image's second sample of the last row is drawn from that row's pixels, scaled by L-1
    ax = fig.axes[(r - 1) * n * (k + 1) + 2 * (k + 1) + 2]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), data.rows[-1].samples[2, 1, 0] / 16.0, rtol=1e-6)


def test_galleries_of_several_runs_stack_their_rows_under_their_names(tmp_path):
    a, b = _data(), _data()
    both = stack_galleries({"classify": a, "autoencode": b})
    assert [r.label for r in both.rows] == [f"{name}: {r.label}" for name, g in (("classify", a), ("autoencode", b))
                                            for r in g.rows]
    np.testing.assert_array_equal(both.images, a.images)
    fig = gallery_figure(both)
    assert sum(ax.get_gid() == "original" for ax in fig.axes) == 8 * 3
    png = save_gallery(both, tmp_path, stem="gallery_regimes")
    assert png == tmp_path / "gallery_regimes.png" and (tmp_path / "gallery_regimes.npz").is_file()
    with pytest.raises(DataError, match="show other images"):
        stack_galleries({"classify": a, "autoencode": _data(seed=1)})


def test_display_maps_levels_to_unit_range_gray_and_rgb():
    g, cmap = _to_display(np.array([[[0, 8], [16, 4]]], dtype=np.uint8), 17)
    assert cmap == "gray" and g.shape == (2, 2) and g.max() == 1.0 and g[0, 1] == 0.5
    rgb, cmap = _to_display(np.full((3, 4, 5), 255, dtype=np.uint8), 256)
    assert cmap is None and rgb.shape == (4, 5, 3) and np.all(rgb == 1.0)
    fig = gallery_figure(_data(n=1, k=1, rows=(("a", 0, 0.0),), c=3, levels=256))
    assert fig.axes[0].get_images()[0].get_array().shape == (8, 8, 3)


def _fake_run(tmp_path):
    """A folder whose job index lists q0, q(x), two layers at steps 0 and 3 (done) and layer1 at 9 (failed)."""
    run = tmp_path / "run"
    specs = [JobSpec.q0(), JobSpec.reference()]
    specs += [JobSpec.conditional(layer, e) for e in (0, 3) for layer in ("layer1", "layer2/odd name")] + [JobSpec.conditional("layer1", 9)]
    for spec in specs:
        job = spec.job_dir(run)
        job.mkdir(parents=True)
        (job / "decoder.pt").write_bytes(b"x")
        done = spec.step != 9
        atomic_write_json(job / ("result.json" if done else "failed.json"), {"status": "ok" if done else "failed"})
    write_job_index(run, specs)
    return run


def test_find_decoders_reads_real_layer_names_and_skips_failed(tmp_path):
    found = find_decoders(_fake_run(tmp_path))
    assert sorted(k for k in found if k[0] is not None) == [("layer1", 0), ("layer1", 3), ("layer2/odd name", 0),
                                                             ("layer2/odd name", 3)]
    assert (None, None) in found


@pytest.mark.parametrize("kw, needle", [(dict(layers=["nope"]), "layers with decoders: layer1, layer2/odd name"),
                                         (dict(steps=[1, 3]), r"no fitted decoder at step 1; steps with decoders: "
                                                              r"0 \(epoch 0\), 3 \(epoch 3\)"),
                                         (dict(n_images=0), "at least 1")])
def test_unknown_layer_or_epoch_is_a_user_error(tmp_path, kw, needle):
    with pytest.raises(UserError, match=needle):
        sample_gallery(_fake_run(tmp_path), progress=False, **kw)


def test_cli_gallery_errors(tmp_path, capsys):
    assert main(["gallery", str(tmp_path / "missing")]) == 2
    assert main(["gallery", str(_fake_run(tmp_path)), "--layers", "nope", "--quiet"]) == 2
    assert "layers with decoders" in capsys.readouterr().err


def test_cli_gallery_passes_its_options_on(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake(run_dir, **kw):
        seen.update(kw, run_dir=run_dir)
        return run_dir / "figures" / "gallery.png"

    monkeypatch.setattr("ibprobe.cli.gallery.make_gallery", fake)
    argv = ["gallery", str(tmp_path), "--n-images", "3", "--samples", "5", "--layers", "layer1, layer2.0",
            "--epochs", "10,0", "--seed", "7", "--device", "cpu"]
    assert main(argv) == 0
    assert seen == dict(run_dir=tmp_path, n_images=3, n_samples=5, layers=["layer1", "layer2.0"], steps=None,
                        epochs=[0, 10], seed=7, device="cpu", progress=True)
    assert main(argv[:-6] + ["--steps", "9,0,9"]) == 0 and (seen["steps"], seen["epochs"]) == ([0, 9], None)
    assert "gallery.png" in capsys.readouterr().out
    assert main(argv + ["--quiet"]) == 0 and seen["progress"] is False and capsys.readouterr().out == ""


def test_choose_images_is_seeded_and_held_out():
    test_idx = np.arange(100, 200, 3)
    a = choose_images(test_idx, 5, seed=0)
    assert len(set(a)) == 5 and set(a) <= set(test_idx) and a.dtype == np.int64
    np.testing.assert_array_equal(a, choose_images(test_idx, 5, seed=0))
    assert not np.array_equal(a, choose_images(test_idx, 5, seed=1))
    with pytest.raises(UserError, match="held-out"):
        choose_images(test_idx, 1000, seed=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run folder: a ResNet trained 1 epoch (4 steps) on digits, layer1 measured at steps 0 and 4, tiny
    decoders."""
    pytest.importorskip("decoders.io")
    import torch

    from ibprobe.pipeline import run_preset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: more threads only add contention on a loaded machine
    try:
        out = tmp_path_factory.mktemp("gallery") / "run"
        request = AnalysisConfig(device="cpu", layers=("layer1",), progress=False,
                                 decoder=dict(nr_resnet=1, nr_filters=4, nr_mix=1, dropout=0.0, cond_filters=8),
                                 fit=dict(epochs=1, batch_size=256, patience=1))
        run_preset("digits-quick", out, request, figures=False,
                   train_overrides=dict(epochs=1, checkpoint_epochs=(0, 1), max_train=256))
        yield out
    finally:
        torch.set_num_threads(threads)


def test_gallery_end_to_end_on_a_tiny_run(tiny_run):
    from ibprobe.rundir.sources import open_source

    data = sample_gallery(tiny_run, n_images=2, n_samples=2, device="cpu", progress=False)
    assert [row.label for row in data.rows] == ["q(x), unconditional", "layer1 @ epoch 0", "layer1 @ epoch 1 (step 4)"]
    _, dataset = open_source(tiny_run)
    assert set(data.image_index) <= set(dataset.test_idx.tolist()) and len(set(data.image_index)) == 2
    np.testing.assert_array_equal(data.images, dataset.images[data.image_index])
    for row in data.rows:
        assert row.samples.shape == (2, 2, 1, 8, 8) and row.samples.dtype == np.uint8
        assert row.samples.max() < dataset.levels
    # a row's samples depend on the seed and the row only, not on which other rows are drawn
    again = sample_gallery(tiny_run, n_images=2, n_samples=2, layers=["layer1"], epochs=[1], device="cpu",
                           unconditional=False, progress=False)
    assert [row.label for row in again.rows] == ["layer1 @ epoch 1 (step 4)"]
    np.testing.assert_array_equal(again.rows[0].samples, data.rows[2].samples)
    by_step = sample_gallery(tiny_run, n_images=2, n_samples=2, layers=["layer1"], steps=[4], device="cpu",
                             unconditional=False, progress=False)
    np.testing.assert_array_equal(by_step.rows[0].samples, data.rows[2].samples)

    png = save_gallery(data, tiny_run / "figures")
    assert png == tiny_run / "figures" / "gallery.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert png.with_suffix(".pdf").is_file()
    saved = np.load(png.with_suffix(".npz"))
    np.testing.assert_array_equal(saved["samples"], np.stack([row.samples for row in data.rows]))
    assert list(saved["row_epochs"]) == [-1, 0, 1] and list(saved["row_steps"]) == [-1, 0, 4]

    with pytest.raises(UserError, match=r"no fitted decoder at epoch 5; steps with decoders: 0 \(epoch 0\), 4 "
                                        r"\(epoch 1\)"):
        sample_gallery(tiny_run, epochs=[5], progress=False)


def test_plot_end_to_end_on_a_tiny_run(tiny_run):
    from ibprobe.report.plots import plot_run

    names = {p.name for p in plot_run(tiny_run)}
    assert {"info_plane.png", "mi_vs_epoch.png", "training_curves.png"} <= names


def test_a_preset_gallery_follows_overridden_checkpoints(tiny_run):
    """digits-quick draws epochs 0 and 8; a run whose checkpoints were overridden to 0 and 1 draws those instead."""
    from ibprobe.pipeline import draw_figures

    written = draw_figures(tiny_run, progress=False, gallery_epochs=(0, 8), gallery_layers=("layer1", "pool"),
                           device="cpu")
    assert tiny_run / "figures" / "gallery.png" in written
    saved = np.load(tiny_run / "figures" / "gallery.npz")
    assert list(saved["row_epochs"]) == [-1, 0, 1] and set(saved["row_layers"]) == {"", "layer1"}
    assert list(saved["row_steps"]) == [-1, 0, 4]
