"""The fair presets on seq-fmnist (issue 20, item 4) are what their committed grid studies chose.

Each entry of ``VALIDATED_OPTIONS`` (and masked ER's finite m in the rivals experiment) must be the
best point, by the mean validation objective, of the study in ``reports/presets/NAME/``, whose grid is
``PRESET_GRIDS[NAME]`` and which ran every point on 10 seeds."""

import math
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from clbench.runs.config import RunConfig
from clbench.runs.presets import PRESET_GRIDS, VALIDATED_OPTIONS

ROOT = Path(__file__).resolve().parents[1]


def study_table(name: str) -> pd.DataFrame:
    table = pd.read_csv(ROOT / "reports" / "presets" / name / f"presets-{name}.data.csv")
    assert (table["state"] == "COMPLETE").all() and (table["n_seeds"] == 10).all()
    assert (table["split"] == "validation").all()
    return table


def chosen(name: str) -> dict[str, float]:
    table = study_table(name)
    (param, grid), *_ = PRESET_GRIDS[name].items()
    assert sorted(table[param]) == sorted(grid)  # every point of the grid, once
    best = table.loc[table["objective"].idxmax()]
    return {param: float(best[param])}


@pytest.mark.parametrize("name", sorted(n for n in PRESET_GRIDS if n != "er"))
def test_each_validated_option_is_its_grid_studys_best_point(name):
    assert VALIDATED_OPTIONS[("seq-fmnist", name)] == chosen(name)
    # and a run on seq-fmnist takes it at every buffer, saying where it comes from
    for buffer in (50, 200, 500):
        cfg = RunConfig(method=name, benchmark="seq-fmnist", buffer_size=buffer).resolve()
        assert dict(cfg.options) | chosen(name) == dict(cfg.options)
        assert any("validation split (reports/presets/" in n for n in cfg.notes)


def test_the_rivals_experiments_finite_m_for_er_is_its_grid_studys_best_point():
    m = chosen("er")["mask"]
    rivals = tomllib.loads((ROOT / "registry" / "rivals.toml").read_text())
    finite = [float(v) for v in rivals["per_method"]["er"]["masks"] if v not in ("none", "-inf")]
    assert finite == [m] and math.isfinite(m)
    assert f"er:{m:g}" in rivals["render"]["masked"]
