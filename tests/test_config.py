import pytest
import yaml

from tlpipe.config import BUILTIN, PRETRAIN, TuneConfig, load_params, parse_params
from tlpipe.errors import ConfigError

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
        ({"make_subset__train_per_clas": 3}, "unknown key 'make_subset.train_per_clas' in make_subset; allowed: "
                                            "train_per_class"),
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
