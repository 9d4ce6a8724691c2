"""Config files, overrides, validation and the two recipes."""

import json
from pathlib import Path

import pytest

from fcnseg.config import (
    PAPER_LR,
    ConfigError,
    TrainConfig,
    load_config,
    model_variant,
    parse_overrides,
    stage_models,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_the_issue_datasets_have_configs():
    names = {path.stem for path in CONFIGS}
    datasets = {load_config(path).dataset for path in CONFIGS}
    assert {"sbd", "camvid", "siftflow", "nyud", "context", "synthetic"} <= datasets
    assert "voc-fcn8s-paper" in names and "voc-fcn8s-modern" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_resolves(path):
    config = load_config(path).resolved()
    assert config.lr > 0 and config.batch_size >= 1 and config.optimizer in ("sgd", "adamw")
    assert config.val_dataset is not None
    assert all(value is not None for value in (config.schedule, config.loss_reduction))


def test_voc_paper_config_is_the_reference_recipe():
    config = load_config(CONFIGS[0].parent / "voc-fcn8s-paper.toml").resolved()
    assert (config.dataset, config.val_dataset, config.val_split) == (
        "sbd",
        "seg11valid",
        "seg11valid",
    )
    assert config.staged and config.model == "fcn8s_vgg16"
    assert (config.batch_size, config.momentum, config.weight_decay) == (1, 0.99, 5e-4)
    assert (config.bias_lr_mult, config.bias_decay, config.loss_reduction) == (2.0, False, "sum")
    assert config.schedule == "fixed" and config.max_iters == 100_000 and config.seed == 1337
    assert not (config.flip or config.jitter or config.crop_size or config.scale_range)
    assert not config.learnable_upsample  # fixed bilinear deconvolutions


@pytest.mark.parametrize(
    ("model", "lr"),
    [("fcn32s_vgg16", 1e-10), ("fcn16s_vgg16", 1e-12), ("fcn8s_vgg16", 1e-14)],
)
def test_paper_learning_rates_follow_the_stage(model, lr):
    assert TrainConfig(recipe="paper", model=model).resolved().lr == lr
    assert (
        PAPER_LR["8s-atonce"]
        == TrainConfig(recipe="paper", model="fcn8s_atonce_vgg16").resolved().lr
    )


def test_modern_defaults_and_explicit_values_win():
    config = TrainConfig(recipe="modern", optimizer="adamw").resolved()
    assert (config.lr, config.weight_decay, config.schedule) == (1e-3, 0.01, "poly")
    assert config.flip and config.jitter and config.scale_range == [0.5, 2.0]
    config = TrainConfig(recipe="modern", momentum=0.5, lr=0.3).resolved()
    assert (config.momentum, config.lr, config.optimizer) == (0.5, 0.3, "sgd")


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "fcn32s_resnet18"\nepochs = 2\n')
    config = load_config(
        path,
        ["lr=1e-3", "flip=false", "model=fcn8s_resnet18", "scale_range=[0.5, 1.5]",
         "train_options={size = 64}", "crop_size=none", "epochs=7", "weight_decay=0"],
    )  # fmt: skip
    assert config.lr == 1e-3 and config.flip is False and config.model == "fcn8s_resnet18"
    assert config.scale_range == [0.5, 1.5] and config.train_options == {"size": 64}
    assert config.crop_size is None and config.epochs == 7
    assert isinstance(config.weight_decay, float)  # an int given for a float is widened
    assert parse_overrides(["class_weights=[1, 2.5]"]) == {"class_weights": [1, 2.5]}


def test_unknown_key_gets_a_suggestion(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("lerning_rate = 0.1\n")
    with pytest.raises(
        ConfigError, match=r"bad.toml: unknown key 'lerning_rate': did you mean 'lr'"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="'base_lr': did you mean 'lr'"):  # Caffe's name
        load_config(None, ["base_lr=1e-10"])
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(None, ["batchsize=4"])
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(None, ["epoch=4"])


def test_bad_values_name_the_key(tmp_path):
    cases = {
        "epochs = 'ten'": "epochs = 'ten' should be an integer",
        "flip = 1": "flip = 1 should be true or false",
        "optimizer = 'adam'": "optimizer = 'adam' is not allowed: choose one of sgd, adamw",
        "batch_size = 0": "batch_size must be at least 1",
        "loss_sampling = 1.0": "loss_sampling",
        "class_weights = 'inverse'": "class_weights must be 'none', 'median' or a list",
        "scale_range = [2.0, 1.0]": "scale_range must be",
        "staged = true\nmodel = 'fcn32s_vgg16'": "staged training ends at an FCN-8s",
        "loss = 'lovasz'": "loss = 'lovasz' is not allowed: choose one of cross_entropy, focal",
        "loss = 'focal'\nfocal_gamma = -0.5": "focal_gamma must be at least 0.0",
        "loss = 'dice'\nloss_reduction = 'sum'": "loss = 'dice' needs loss_reduction = 'mean'",
    }
    for text, message in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            load_config(path)
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "broken.toml").write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="broken.toml cannot be parsed"):
        load_config(tmp_path / "broken.toml")


def test_resolved_config_round_trips_through_json(tmp_path):
    config = load_config(CONFIGS[0].parent / "camvid.toml").resolved()
    config.save(tmp_path / "config.json")
    again = load_config(tmp_path / "config.json")
    assert again == config
    assert json.loads((tmp_path / "config.json").read_text())["recipe"] == "modern"


def test_stage_names():
    assert stage_models("fcn8s_vgg16") == ["fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16"]
    assert model_variant("fcn8s_atonce_vgg16") == "8s-atonce"
    with pytest.raises(ConfigError):
        stage_models("fcn16s_vgg16")


def test_loss_choices_are_the_losses_there_are():
    from fcnseg.losses import LOSSES

    config = load_config(None, ["loss=focal", "focal_gamma=1"])
    assert (config.loss, config.focal_gamma) == ("focal", 1.0)
    assert TrainConfig().loss == "cross_entropy" and TrainConfig().focal_gamma == 2.0
    for loss in LOSSES:
        load_config(None, [f"loss={loss}"]).resolved()  # the modern recipe: a mean loss
    with pytest.raises(ConfigError, match="loss = 'ce\\+dice' needs loss_reduction = 'mean'"):
        TrainConfig(recipe="paper", loss="ce+dice").resolved()  # the paper sums its loss


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("lr=nan", "lr = nan"),
        ("momentum=inf", "momentum = inf"),
        ("weight_decay=-inf", "weight_decay = -inf"),
        ("poly_power=nan", "poly_power = nan"),
        ("time_limit_minutes=inf", "time_limit_minutes = inf"),
        ("scale_range=[0.5, nan]", "scale_range = [0.5, nan]"),
        ("class_weights=[1.0, inf]", "class_weights = [1.0, inf]"),
        ("task_weights={semantic = nan}", "task_weights.semantic = nan"),
    ],
)
def test_every_float_key_must_be_finite(override, named):
    """nan passed every range check and reached the optimizer as 'Invalid learning rate:
    nan', naming no key (issue 13)."""
    with pytest.raises(ConfigError, match="is not a finite number") as error:
        load_config(None, [override])
    assert named in str(error.value) and "\n" not in str(error.value)


def test_none_splits_are_accepted():
    config = load_config(None, ["train_split=none", "val_split=none"])
    assert (config.train_split, config.val_split) == (None, None)
