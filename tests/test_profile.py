"""minicolor profile on the cpu: a row per layer with positive times, totals, the chart.

No timed assertions: only that every layer is there, measured, and adds up.
"""
import numpy as np
from PIL import Image

from minicolor import cli
from minicolor.tools import profile
from minicolor.models import ColorizationNet
from minicolor.nn import BatchNorm2d, Conv2d


def test_profile_rows_cover_every_layer_and_add_up():
    result = profile.profile(width=2, batch=1, size=16, device="cpu", warmup=1, repeat=1)
    leaves = [(name, m) for name, m in ColorizationNet(2).named_modules() if not m._modules]
    rows = {r["layer"]: r for r in result["rows"]}
    assert list(rows)[-1] == "loss"
    assert list(rows)[:-1] == [name for name, _ in leaves if name in rows]  # in forward order
    assert {name for name, m in leaves if isinstance(m, (Conv2d, BatchNorm2d))} <= set(rows)
    assert rows["group1.0"]["kind"] == "conv 3x3 s1 d1" and rows["group1.0"]["shape"] == [1, 2, 16, 16]
    assert rows["group1.4"]["kind"] in ("batchnorm", "relu + batchnorm")  # see the last test
    assert rows["upsample"]["kind"] == "upsample x4 bilinear"
    for r in result["rows"]:
        assert r["forward_ms"] > 0 and r["backward_ms"] > 0, r
    parts = sum(r["forward_ms"] + r["backward_ms"] for r in result["rows"])
    assert np.isclose(result["total_ms"], parts + result["autograd_ms"] + result["update_ms"])
    assert result["update_ms"] > 0 and result["step_ms"] > 0 and result["launches"] is None


def test_profile_command_prints_the_table_and_draws_the_chart(tmp_path, capsys):
    chart = tmp_path / "charts" / "profile.png"
    assert cli.main(["profile", "--device", "cpu", "--width", "2", "--size", "16",
                     "--warmup", "1", "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "on cpu (wall time per layer)" in lines[0]
    assert lines[1].split()[:4] == ["layer", "kind", "output", "shape"]
    assert any(line.startswith("group4.2   conv 3x3 s1 d1         1x16x2x2") for line in lines)
    assert any(line.startswith("update     Adam") for line in lines)
    shares = [float(line.split()[-1].rstrip("%")) for line in lines if line.endswith("%")]
    assert abs(sum(shares) - 100) < 1.0  # the rows are the whole step
    assert "Numba kernel launches per step: none" in out and f"chart: {chart}" in out
    assert Image.open(chart).size[0] > 300


def test_relus_fused_into_batchnorm_get_no_row(monkeypatch):
    from minicolor import nn

    monkeypatch.setattr(nn, "FUSE", True, raising=False)  # as where nn.Sequential fuses them
    fused = nn.fused_layers(ColorizationNet(2))
    assert "group1.3" in fused and "group7.5" in fused and "group1.1" not in fused and len(fused) == 7
    result = profile.profile(width=2, batch=1, size=16, device="cpu", warmup=1, repeat=1)
    rows = {r["layer"]: r for r in result["rows"]}
    assert not fused & set(rows) and rows["group1.4"]["kind"] == "relu + batchnorm"


def test_the_update_has_its_own_column_and_its_bar_is_not_under_the_legend():
    result = profile.profile(width=2, batch=1, size=16, device="cpu", warmup=1, repeat=1)
    lines = profile.format_table(result).splitlines()
    assert lines[1].split()[-3:] == ["update", "ms", "share"]
    update = next(line for line in lines if line.startswith("update     Adam")).split()
    assert update[2:4] == ["0.000", "0.000"] and float(update[4]) == round(result["update_ms"], 3)
    result["update_ms"] = 10 * max(r["forward_ms"] + r["backward_ms"] for r in result["rows"])
    fig = profile.chart(result)  # the update as the longest bar: the lower right is taken
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bar = ax.containers[2].patches[-1].get_window_extent()  # the update's bar
    assert bar.width > 100 and not legend.overlaps(bar)
