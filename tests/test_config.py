"""Config files, overrides, validation and the two recipes."""

import json
import re
from pathlib import Path

import pytest

from fcnseg.builder import resolve_spec
from fcnseg.config import (
    PAPER_LR,
    ConfigError,
    TrainConfig,
    load_config,
    model_variant,
    parse_overrides,
    stage_models,
)
from fcnseg.models import registry
from fcnseg.models.registry import list_models
from fcnseg.models.spec import ModelSpec

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
    spec = resolve_spec(config.model, require_tasks=False, **config.model_options)
    assert spec.geometry == "caffe" and spec.upsample == "deconv"
    assert not spec.learnable_upsample  # fixed bilinear deconvolutions


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


# The paper's naming of its nets, fcn<variant>_[atonce_]<backbone and inputs>: every
# registered model's name follows it, so it is an oracle for what the spec says.
PAPER_NAME = re.compile(r"^fcn(32s|16s|8s)_(atonce_)?(.+)$")


@pytest.mark.parametrize("name", list_models())
def test_the_spec_gives_each_registered_model_its_named_variant_and_stages(name):
    variant, atonce, rest = PAPER_NAME.match(name).groups()
    assert model_variant(name) == variant + ("-atonce" if atonce else "")
    if variant == "8s" and not atonce:
        assert stage_models(name) == [f"fcn{stage}_{rest}" for stage in ("32s", "16s", "8s")]
    else:
        with pytest.raises(ConfigError, match="staged training needs an fcn8s_<backbone> model"):
            stage_models(name)


def test_variant_and_stages_come_from_the_spec_not_the_name(monkeypatch):
    """Models registered under names of their own: their specs say what they are (the FCN-32s
    here is fcn32s_vgg16's spec, and comes first by name)."""
    monkeypatch.setitem(
        registry._MODELS, "coarse_net", ModelSpec("vgg16", "32s", name="coarse_net")
    )
    monkeypatch.setitem(registry._MODELS, "fine_net", ModelSpec("vgg16", "8s", name="fine_net"))
    assert model_variant("coarse_net") == "32s"
    assert TrainConfig(recipe="paper", model="fine_net").resolved().lr == PAPER_LR["8s"]
    assert stage_models("fine_net") == ["coarse_net", "fcn16s_vgg16", "fine_net"]
    with pytest.raises(ConfigError, match="unknown model 'fcn8s_nothing'"):
        stage_models("fcn8s_nothing")


def test_a_load_is_validated_once(tmp_path, monkeypatch):
    """The file and its overrides make one config, checked once; resolving checks the
    resolved copy once more (the recipe may add what cannot train: a summed Dice loss)."""
    sources = []
    check = TrainConfig.validate
    monkeypatch.setattr(
        TrainConfig, "validate", lambda config, source="config": sources.append(source) or check(config, source)
    )  # fmt: skip
    path = tmp_path / "run.toml"
    path.write_text('model = "fcn32s_vgg16"\nepochs = 2\n')
    load_config(path, ["epochs=3"])
    assert sources == [f"{path} with overrides"]
    sources.clear()
    load_config(path).resolved()
    assert sources == [str(path), "config"]


# A config.json written by fcnseg 0.1 (TrainConfig(model="fcn32s_efficientnet_lite0").resolved()):
# the build options at the top level, nulls included.
CONFIG_0_1 = {
    "model": "fcn32s_efficientnet_lite0", "num_classes": None, "geometry": None,
    "upsample": "deconv", "learnable_upsample": False, "pretrained_backbone": False,
    "backbone_weights": None, "init_from": None, "init_streams": {}, "staged": False,
    "stage_lr_factor": 0.01, "dataset": "synthetic", "root": None, "train_split": "train",
    "val_split": "val", "val_dataset": "synthetic", "val_root": None, "train_options": {},
    "val_options": {}, "recipe": "modern", "epochs": 10, "max_iters": None, "batch_size": 8,
    "accumulate": 1, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001,
    "bias_lr_mult": 1.0, "bias_decay": False, "schedule": "poly", "poly_power": 0.9,
    "warmup_iters": 100, "loss_reduction": "mean", "loss_sampling": 0.0, "sampling_cell": 32,
    "class_weights": "none", "class_weight_images": 500, "task_weights": {}, "crop_size": None,
    "scale_range": [0.5, 2.0], "flip": True, "jitter": True, "amp": "auto",
    "activation_checkpointing": False, "output": "runs", "name": None, "seed": 1337,
    "device": "auto", "threads": 0, "num_workers": 2, "val_batch_size": 1,
    "max_val_images": None, "eval_every": 1, "checkpoint_every": 0, "log_every": 10,
    "overlays": 4, "time_limit_minutes": 0.0, "deterministic": False,
}  # fmt: skip


def test_a_config_json_of_fcnseg_0_1_still_loads(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG_0_1))
    config = load_config(path).resolved()
    assert config.model_options == {
        "upsample": "deconv",
        "learnable_upsample": False,
        "pretrained_backbone": False,
    }  # the nulls were the defaults
    assert (config.lr, config.batch_size, config.seed) == (0.01, 8, 1337)
    config.save(tmp_path / "again.json")  # and today's file holds them under model_options
    saved = json.loads((tmp_path / "again.json").read_text())
    assert "geometry" not in saved and saved["model_options"] == config.model_options
    assert load_config(tmp_path / "again.json") == config
    path.write_text(json.dumps({**CONFIG_0_1, "num_classes": 7, "geometry": "aligned"}))
    assert load_config(path).model_options["num_classes"] == 7


def test_every_spec_option_can_be_set_at_the_top_level_or_in_model_options(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model = "fcn8s_efficientnet_lite0"\n'
        "output_stride = 16\nin_channels = 4\npretrained_backbone = true\n"
        'model_options = { upsample = "bilinear", skip_scales = [0.01, 0.0001] }\n'
    )
    config = load_config(path, ["learnable_upsample=false", "geometry=aligned"])
    assert config.model_options == {
        "output_stride": 16, "in_channels": 4, "pretrained_backbone": True,
        "upsample": "bilinear", "skip_scales": [0.01, 0.0001],
        "learnable_upsample": False, "geometry": "aligned",
    }  # fmt: skip
    spec = resolve_spec(config.model, require_tasks=False, **config.model_options)
    assert (spec.output_stride, spec.in_channels, spec.upsample) == (16, 4, "bilinear")
    assert spec.pretrained_backbone and spec.skip_scales == (0.01, 0.0001)
    assert "geometry" not in load_config(path, ["geometry=none"]).model_options  # the default
    fused = load_config(
        None,
        ["model=fcn32s_vgg16_rgbd", "fusion=late", "fusion_weights=[0.25, 0.75]",
         "inputs={color = 3, depth = {channels = 1, normalization = {kind = 'log_depth', mean = 7.0}}}"],
    )  # fmt: skip
    spec = resolve_spec(fused.model, num_classes=40, **fused.model_options)
    assert spec.fusion == "late" and spec.fusion_weights == (0.25, 0.75)
    assert (
        spec.input_channels == {"color": 3, "depth": 1} and spec.inputs[1].normalization.mean == 7.0
    )
    tasks = load_config(None, ["model=fcn16s_resnet18", "tasks={semantic = 33, geometric = 3}"])
    assert tasks.model_options == {"tasks": {"semantic": 33, "geometric": 3}}
    saved = tmp_path / "config.json"
    fused.resolved().save(saved)
    assert load_config(saved).model_options == fused.model_options  # JSON keeps them


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["output_stride=7"], "output_stride = 7 is not allowed: choose one of 8, 16, 32"),
        (["in_channels=four"], "in_channels = 'four' should be an integer"),
        (["in_channels=0"], "in_channels must be at least 1, got 0"),
        (["num_classes=0"], "num_classes must be at least 1, got 0"),
        (["fusion=middle"], "fusion = 'middle' is not allowed: choose one of early, late"),
        (["upsample=nearest"], "upsample = 'nearest' is not allowed"),
        (["learnable_upsample=1"], "learnable_upsample = 1 should be true or false"),
        (["fusion_weights=[0.5, 'x']"], "fusion_weights = [0.5, 'x'] should be a list of numbers"),
        (["geometry=round"], "geometry = 'round' is not allowed: choose one of caffe, aligned"),
        (["tasks=[33, 3]"], "tasks = [33, 3] should be a table of name = count"),
        (["inputs=['color', 'depth']"], "inputs = ['color', 'depth'] should be a table"),
        (["model=fcn32s_vgg16_rgbd", "in_channels=3"], "not in_channels=3"),
        (["model=fcn32s_vgg16", "fusion=late"], "late fusion needs two inputs"),
        (["model_options={colour = 1}"], "unknown model option 'colour'"),
        (["model_options={outputstride = 8}"], "did you mean 'output_stride'"),
        (["backbone=resnet18"], "backbone is set by the model's name"),
        (["model_options={variant = '16s'}"], "variant is set by the model's name"),
        (["model_options=3"], "model_options = 3 should be a table of options"),
        (["model=fcn8s_resnet"], "unknown model 'fcn8s_resnet'; did you mean"),
        (
            ["model=fcn32s_vgg16_rgbd", "fusion_weights=[nan, 0.5]"],
            "fusion_weights = [nan, 0.5] is not a finite",
        ),
    ],
)
def test_a_wrong_model_option_is_a_one_line_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_same_option_twice_in_a_file_is_refused(tmp_path):
    path = tmp_path / "twice.toml"
    path.write_text("output_stride = 16\nmodel_options = { output_stride = 8 }\n")
    with pytest.raises(ConfigError, match="output_stride is given twice"):
        load_config(path)


def test_num_classes_of_a_multitask_model_is_refused_not_ignored():
    """Issue 12: a num_classes set for a two-headed model was silently ignored."""
    with pytest.raises(ConfigError, match="set their classes with tasks=.*not num_classes"):
        load_config(None, ["model=fcn16s_vgg16_siftflow", "num_classes=33"])
    config = TrainConfig(model="fcn16s_vgg16_siftflow", model_options={"num_classes": 33})
    with pytest.raises(ConfigError, match="not num_classes"):
        config.resolved()


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


def test_folder_config_holds_the_defaults_of_train_without_a_config():
    """configs/folder.toml, which the README offers to edit, is what ``fcnseg train root=DIR``
    runs: pretrained backbone on."""
    from fcnseg.commands.train import FOLDER_DEFAULTS

    from_file = load_config(CONFIGS[0].parent / "folder.toml").resolved()
    without = load_config(None, [*FOLDER_DEFAULTS, "root=my-data"]).resolved()
    assert from_file == without
    assert from_file.model_options == {"pretrained_backbone": True}
