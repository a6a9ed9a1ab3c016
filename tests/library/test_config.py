from pathlib import Path

import pytest
import yaml

from tlpipe.config import load_params, parse_params
from tlpipe.errors import ConfigError
from tlpipe.sections import BUILTIN, PRETRAIN, TuneConfig

BASE = {"data": {"source": "x"}, "model": {"backbone": "models/backbone.keras"}}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def test_repo_params_load():
    params = load_params("params.yaml")
    assert params.make_subset.train_per_class > 0
    assert params.augment.horizontal_flip is False  # flips are wrong for digits


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"make_subset__train_per_clas": 3},
            "unknown key 'make_subset.train_per_clas' in make_subset; allowed: train_per_class",
        ),
        ({"make_subset__train_per_class": "many"}, "make_subset.train_per_class = 'many'"),
        ({"make_subset__train_per_class": 0}, "make_subset.train_per_class = 0: Input should be greater than 0"),
        ({"data__layout": "grid"}, "data.layout = 'grid': Input should be 'auto', 'folders' or 'flat'"),
        ({"fine_tune__freeze_ratio": 1.5}, "fine_tune.freeze_ratio = 1.5"),
        ({"model__backbone": "alexnet"}, "is neither pretrain, one of vgg16"),
        ({"model__backbone": "inception_v3", "model__image_size": 32}, "minimum for inception_v3"),
        ({"tune__storage": "postgresql://bob:secret@db/optuna"}, "PGUSER/PGPASSWORD"),
        ({"tune__learning_rate": [0.1, 0.001]}, "reversed"),
        ({"bogus": 1}, "unknown key 'bogus'"),
    ],
)
def test_bad_values_name_key_value_and_allowed(changes, expected):
    with pytest.raises(ConfigError) as info:
        parse_params(with_(**changes))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_sections_default_to_the_embedded_project_and_bad_yaml(tmp_path):
    # data.source and model.backbone are no longer required: without them the embedded digits and our own
    # pretrained backbone are used (the old "data is missing" error is gone by design).
    params = parse_params({})
    assert params.data.source == BUILTIN and params.model.backbone == PRETRAIN
    with pytest.raises(ConfigError, match="weights 'imagenet' given for backbone pretrain"):
        parse_params({"model": {"weights": "imagenet"}})
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_apply_dotted_keys():
    params = load_params("params.yaml", {"fine_tune.epochs": 2, "data.source": "s3://b/p"})
    assert params.fine_tune.epochs == 2
    assert params.data.source == "s3://b/p"


def test_tuning_budget_is_a_trial_count_not_a_clock():
    assert TuneConfig().timeout is None  # tune.n_trials is the budget; timeout is an optional cap
    assert load_params("params.yaml").tune.timeout is None


UNRUNNABLE = [
    ({"tune": {"regimes": []}}, "tune.regimes = []: List should have at least 1 item"),
    ({"tune": {"regimes": ["transfer", "bogus"]}}, "tune.regimes.1 = 'bogus': Input should be 'transfer' or"),
    ({"make_digits": {"target_classes": []}}, "make_digits.target_classes = []: List should have at least 2"),
    ({"make_digits": {"source_classes": [3]}}, "make_digits.source_classes = [3]: List should have at least 2"),
    ({"make_digits": {"target_classes": [5, 5, 6]}}, "target_classes [5, 5, 6] repeats a class"),
    ({"pretrain_backbone": {"filters": []}}, "pretrain_backbone.filters = []: List should have at least 1 item"),
    (
        {"model": {"backbone": "mobilenet_v2", "image_size": 96}, "make_subset": {"train_per_class": 10}},
        "model.backbone mobilenet_v2 with model.weights none trains from scratch, and make_subset.train_per_class "
        "10 is below 25",
    ),
]


def test_an_untrained_application_backbone_is_refused_only_at_small_data():
    """25 images per class trained in the benchmark; pretrained weights or our own backbone are fine at any size."""
    app = {"backbone": "mobilenet_v2", "image_size": 96}
    assert parse_params({"model": app, "make_subset": {"train_per_class": 25}}).model.backbone == "mobilenet_v2"
    assert parse_params({"model": {**app, "weights": "imagenet"}, "make_subset": {"train_per_class": 5}})
    assert parse_params({"make_subset": {"train_per_class": 5}}).model.backbone == "pretrain"


@pytest.mark.parametrize(("raw", "expected"), UNRUNNABLE)
def test_params_that_cannot_run_are_refused(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_dvc_yaml_refuses_unrunnable_params_in_one_line_before_dvc_starts(tmp_path):
    """`python -m pipelines.dvc_yaml` (the first thing `make run` does) exits 2 with one line, writing nothing."""
    import subprocess
    import sys

    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for i, (bad, _) in enumerate(UNRUNNABLE):
        merged = {**raw, **{k: {**raw.get(k, {}), **v} for k, v in bad.items()}}
        (tmp_path / f"bad{i}.yaml").write_text(yaml.safe_dump(merged))
    script = (
        "import sys\nfrom tlpipe.cli import run_main\nfrom pipelines.dvc_yaml import main\n"
        "for i in range(int(sys.argv[1])):\n"
        "    try:\n"
        "        run_main(main, ['--params', f'bad{i}.yaml', '--out', f'dvc{i}.yaml'])\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(len(UNRUNNABLE))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 * len(UNRUNNABLE), proc.stderr
    for (_, expected), error, code in zip(UNRUNNABLE, lines[::2], lines[1::2], strict=True):
        assert error.startswith("error: ") and expected in error and code == "exit 2", proc.stderr
    assert not list(tmp_path.glob("dvc*.yaml"))


def test_one_home_per_section_every_model_is_a_params_field_and_a_params_yaml_block():
    """A section is one class in tlpipe/sections.py plus its block in params.yaml: Params gets the field."""
    from tlpipe import sections
    from tlpipe.config import SECTIONS, Params

    models = [
        m
        for m in vars(sections).values()
        if isinstance(m, type) and issubclass(m, sections._Section) and m is not sections._Section
    ]
    assert sorted(SECTIONS.values(), key=lambda m: m.__name__) == sorted(models, key=lambda m: m.__name__)
    raw = yaml.safe_load(Path("params.yaml").read_text())
    assert set(Params.model_fields) == set(raw) == {"seed", "deterministic", *SECTIONS}
    for key, model in SECTIONS.items():
        assert Params.model_fields[key].annotation is model
        assert getattr(Params(), key) == model()  # the default is the model's own defaults
    assert "make_digits" in SECTIONS and SECTIONS["make_digits"] is sections.MakeDigitsConfig


def test_overrides_merge_nested_mappings_and_leave_the_input_alone():
    from tlpipe.config import with_overrides

    raw = {"fine_tune": {"epochs": 9, "patience": 4}}
    out = with_overrides(raw, {"fine_tune": {"epochs": 2}, "tune.dropout": [0.1, 0.3], "seed": 7})
    assert out == {"fine_tune": {"epochs": 2, "patience": 4}, "tune": {"dropout": [0.1, 0.3]}, "seed": 7}
    assert raw == {"fine_tune": {"epochs": 9, "patience": 4}}
    assert (
        load_params("params.yaml", {"fine_tune": {"epochs": 2}}).fine_tune.patience
        == load_params("params.yaml").fine_tune.patience
    )
