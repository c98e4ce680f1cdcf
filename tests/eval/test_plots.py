"""Every figure is drawn from synthetic results and written as a non-empty file."""

import pytest

from longssm.eval.errors import EvalError
from longssm.eval.plots import PLOTS, plot_heatmap, plot_lengths, plot_positions, plot_sweep
from tests.eval.synthetic import fake_results

PNG_MAGIC = b"\x89PNG"


@pytest.fixture
def runs():
    return [fake_results(f"T{T}", T, slope=0.02 * k - 0.03) for k, T in enumerate([16, 64, 256])]


@pytest.mark.parametrize("kind", sorted(PLOTS))
def test_each_plot_writes_a_png(kind, runs, tmp_path):
    (path,) = PLOTS[kind](runs, tmp_path / f"{kind}.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_no_suffix_writes_png_and_svg(runs, tmp_path):
    paths = plot_lengths(runs, tmp_path / "fig", metric="bits_per_byte")
    assert sorted(p.suffix for p in paths) == [".png", ".svg"]
    assert b"<svg" in paths[1].read_bytes()[:2000]


def test_plot_errors(runs, tmp_path):
    with pytest.raises(EvalError, match="format"):
        plot_lengths(runs, tmp_path / "fig.jpgx")
    with pytest.raises(EvalError, match="metric"):
        plot_heatmap(runs, tmp_path / "fig.png", metric="accuracy")
    runs[0]["train_length"] = None
    with pytest.raises(EvalError, match="training length"):
        plot_sweep(runs, tmp_path / "fig.png")
    with pytest.raises(EvalError, match="per-position"):
        plot_positions([fake_results("x", 16, positions=False)], tmp_path / "fig.png")
