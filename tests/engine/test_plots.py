"""The figures: one quantity per axis, units in the labels, axes that start where they should."""
import pytest

from vimd_models.engine import plots

CLASSIFY = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "train_ce": 2.0 / e, "train_time_s": 1.0,
             "val_top1": 30.0 + 5 * e, "val_top5": t5} for e, t5 in ((1, 98.0), (2, 99.5), (3, 100.0))]
VIMD = [{"epoch": e, "train_loss": 51.0 / e, "train_ce": 2.0 / e, "train_ld": 0.5 / e, "train_hsd": 2.4 / e,
         "val_top1": 40.0 + e, "val_top5": 90.0 + e} for e in (1, 2)]
SR = [{"epoch": e, "train_loss": 0.05, "train_l1": 0.05, "val_psnr": 24.0 + e, "val_ssim": 0.6,
       "val_set5/psnr": 25.0, "val_set5/ssim": 0.7} for e in (1, 2)]
DFKD = [{"epoch": e, "train_loss": 30.0, "train_kd": 0.2, "train_mhad": 0.5, "train_sfcl": 2.8, "train_g_prior": 60.0,
         "train_g_kd": 0.2, "val_top1": 12.0, "val_top5": 55.0} for e in (1, 2)]
ITERATIONS = [{"epoch": 0.5 * i, "train_loss": 0.1, "val_psnr": 20.0} for i in (1, 2, 3)]


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _titles(fig):
    return [ax.get_title() for ax in _visible(fig)]


@pytest.mark.parametrize("history", [CLASSIFY, VIMD, SR, DFKD, ITERATIONS], ids=["classify", "vimd", "sr", "dfkd", "iter"])
def test_curves_one_panel_per_quantity(history, tmp_path):
    fig = plots.curves_figure(history, "run")
    axes = _visible(fig)
    losses = {k for r in history for k in r if k.startswith("train_") and k != "train_time_s"}
    metrics = {k[4:].rsplit("/", 1)[-1] for r in history for k in r if k.startswith("val_")}
    top5 = [r["val_top5"] for r in history if "val_top5" in r]
    metrics -= {"top5"} if top5 and sum(top5) / len(top5) >= plots.SATURATED_TOP5 else set()
    assert len(axes) == len(losses) + len(metrics)
    for ax in axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
    plots.write_curves(history, str(tmp_path / "curves.png"), "run")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_psnr_and_ssim_never_share_an_axis():
    fig = plots.curves_figure(SR)
    psnr = [ax for ax in _visible(fig) if "PSNR" in ax.get_title()]
    ssim = [ax for ax in _visible(fig) if "SSIM" in ax.get_title()]
    assert len(psnr) == len(ssim) == 1 and psnr[0] is not ssim[0]
    assert "(dB)" in psnr[0].get_ylabel()
    assert len(psnr[0].get_lines()) == 2  # the validation split and set5, same quantity


def test_curves_loss_components_have_their_own_axes():
    titles = _titles(plots.curves_figure(VIMD))
    assert {"training loss", "training: ce", "training: ld", "training: hsd"} <= set(titles)
    assert "validation: top-5 accuracy" in titles  # top-5 below saturation is drawn
    dfkd = _titles(plots.curves_figure(DFKD))
    assert {"generator: prior", "generator: kd", "training: kd"} <= set(dfkd)


def test_curves_saturated_top5_is_dropped_and_epoch_ticks_are_integers():
    fig = plots.curves_figure(CLASSIFY)
    assert not any("top-5" in t for t in _titles(fig))
    fig.canvas.draw()
    for ax in _visible(fig):
        assert all(float(t).is_integer() for t in ax.get_xticks())
    top1 = next(ax for ax in _visible(fig) if "top-1" in ax.get_title())
    assert top1.get_ylim() == (0, 100)


ROWS = [
    {"run": "teacher", "top1": 90.0, "psnr": None, "ssim": None},
    {"run": "student", "top1": 12.0, "psnr": None, "ssim": None},
    {"run": "sr small", "top1": None, "psnr": 24.5, "ssim": 0.61},
    {"run": "sr teacher", "top1": None, "psnr": 25.4, "ssim": 0.66},
]


def test_results_figure_axes_start_at_zero_with_labels(tmp_path):
    fig = plots.results_figure(ROWS, "demo", chance=10.0, baseline="sr small")
    axes = {ax.get_title(): ax for ax in _visible(fig)}
    assert fig._suptitle.get_text() == "demo"
    assert set(axes) == {"classification", "super-resolution x4: PSNR", "super-resolution x4: PSNR difference",
                         "super-resolution x4: SSIM"}
    assert axes["classification"].get_xlim()[0] == 0 and axes["super-resolution x4: PSNR"].get_xlim()[0] == 0
    diff = axes["super-resolution x4: PSNR difference"]
    assert "sr small" in diff.get_xlabel() and "(dB)" in diff.get_xlabel()
    labels = [t.get_text() for t in diff.texts]
    assert "+0.90" in labels and "+0.00" in labels  # the difference, written out
    assert "90.0" in [t.get_text() for t in axes["classification"].texts]
    plots.write_results_plot(ROWS, str(tmp_path / "r.png"), "demo", chance=10.0, baseline="sr small")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_image_grid(tmp_path):
    import torch
    plots.write_image_grid(torch.rand(4, 3, 8, 8), str(tmp_path / "g.png"), "grid", ["a", "b", "c", "d"])
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
