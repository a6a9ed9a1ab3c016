"""With `tune.enabled: false` the tune step still writes every file the graph declares for it."""

import yaml

from components.tune import main
from pipelines.graph import argv, build, file_path
from tests.conftest import REPO
from tlpipe.config import load_params
from tlpipe.contracts import BestParams


def test_disabled_tuning_writes_the_declared_plots_and_best_params(tmp_path, monkeypatch):
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["tune"]["enabled"] = False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    steps = build(load_params(params_file))
    tune = next(s for s in steps if s.fanout)
    assert tune.plots, "the graph declares tune's plots"
    monkeypatch.chdir(tmp_path)  # the declared paths are relative to the project root
    line = argv(tune, steps)
    main([line[0], "--params", str(params_file), *line[1:]])
    for spec, _ in tune.plots:
        path = tmp_path / file_path(tune, spec)
        assert path.is_file() and path.stat().st_size > 0, spec
    for csv_spec in (spec for spec, _ in tune.plots if spec.endswith(".csv")):
        header = (tmp_path / file_path(tune, csv_spec)).read_text(encoding="utf-8").splitlines()
        assert len(header) == 1 and "freeze_ratio" in header[0]  # a header, no rows: nothing was tuned
    best = BestParams.read(tmp_path / tune.output("tuning").path)
    assert best.stopped_by == "disabled" and best.params is None
