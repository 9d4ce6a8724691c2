"""The engine on multi-input (NYUDv2 RGB-D, RGB-HHA late fusion) and multi-task (SIFT Flow
two heads) models: a few steps on tiny datasets in the published formats, checkpoints that
reload and predict (``Segmenter`` and ``fcnseg predict --input NAME=PATH``), late fusion
started from two single-stream checkpoints, and every spec option set from ``fcnseg train``."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch import nn

import fcnseg
from fcnseg.builder import resolve_spec
from fcnseg.cli import main
from fcnseg.config import TrainConfig
from fcnseg.data import NYUD_NORMALIZATION
from fcnseg.data.nyud import NYUD_CLASSES
from fcnseg.data.palettes import voc_palette
from fcnseg.inference import Segmenter
from fcnseg.modelfile import record_of
from fcnseg.models import FCN, InputSpec, ModelSpec, backbones, registry
from fcnseg.models.backbones import VGG16
from fcnseg.models.multitask import SIFTFLOW_TASKS
from fcnseg.models.spec import tasks_from
from fcnseg.training import checkpoint as ckpt
from fcnseg.training.initialize import build_model_for
from fcnseg.training.setup import build_criterion
from fcnseg.training.stages import train

H, W = 32, 32
SIFT = "spatial_envelope_256x256_static_8outdoorcategories"


# ------------------------------------------------------------------ slim models, registered


def slim_vgg16(*, geometry: str = "aligned", in_channels: int = 3) -> VGG16:
    """A VGG16 with a few channels: the same code paths as the paper's, in milliseconds."""
    return VGG16(geometry=geometry, in_channels=in_channels, widths=(4, 4, 8, 8, 8), fc_channels=16)


def slim_specs() -> dict[str, ModelSpec]:
    """The paper's NYUDv2 and SIFT Flow nets (registry.py) on the slim backbone."""
    color, hha = InputSpec("color", 3), InputSpec("hha", 3, NYUD_NORMALIZATION["hha"])
    depth = InputSpec("depth", 1, NYUD_NORMALIZATION["depth"])
    return {
        "fcn32s_slim": ModelSpec("slim", "32s"),
        "fcn32s_slim_hha": ModelSpec("slim", "32s", inputs=(hha,)),
        "fcn32s_slim_rgbd": ModelSpec("slim", "32s", inputs=(color, depth)),
        "fcn32s_slim_rgbhha_late": ModelSpec("slim", "32s", inputs=(color, hha), fusion="late"),
        "fcn16s_slim_siftflow": ModelSpec("slim", "16s", tasks=tasks_from(SIFTFLOW_TASKS)),
    }


@pytest.fixture(autouse=True)
def slim_models(monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, "slim", slim_vgg16)  # before the specs name it
    for name, spec in slim_specs().items():
        monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(spec, name=name))


def slim(name: str = "fcn32s_slim", num_classes: int = 40) -> FCN:
    return fcnseg.build_model(name, num_classes=num_classes)


# ---------------------------------------------------------- tiny datasets in their formats


def rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def labels(seed: int, low: int, high: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(low, high, (H, W))


def make_nyud(root):
    """nyud.tar.gz's layout: images, 16-bit depth, HHA, segmentation .mat, split lists."""
    base = root / "nyud"
    for split, ids in (("train", ["5003", "5004"]), ("test", ["5001"])):
        (base / "data").mkdir(parents=True, exist_ok=True)
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids, start=int(ids[0])):
            for folder, seed in (("images", n), ("hha", n + 50)):
                (base / "data" / folder).mkdir(exist_ok=True)
                Image.fromarray(rgb(seed)).save(base / "data" / folder / f"img_{i}.png")
            depth = (np.arange(H * W).reshape(H, W) * 4 + 1000 + n).astype(np.uint16)
            (base / "data" / "depth").mkdir(exist_ok=True)
            Image.fromarray(depth).save(base / "data" / "depth" / f"img_{i}.png")
            (base / "segmentation").mkdir(exist_ok=True)
            label = labels(n, 0, 41).astype(np.uint8)  # 0 void, 1..40
            scipy.io.savemat(base / "segmentation" / f"img_{i}.mat", {"segmentation": label})
    return base


def make_siftflow(root):
    """SiftFlowDataset.zip's layout: jpg images, semantic (0 void, 1..33) and geometric
    (-1 void, 1..3) label .mat files, split lists."""
    base = root / "SiftFlowDataset"
    splits = {"trainval": ["coast_a1", "street_b2"], "test": ["mountain_c3"]}
    for split, ids in splits.items():
        base.mkdir(parents=True, exist_ok=True)
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids, start=len(split)):
            for folder in ("Images", "SemanticLabels", "GeoLabels"):
                (base / folder / SIFT).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb(n)).save(base / "Images" / SIFT / f"{i}.jpg", quality=95)
            semantic = {"S": labels(n, 0, 34).astype(np.float64)}
            geometric = {"S": labels(n + 7, -1, 4).astype(np.int32)}
            scipy.io.savemat(base / "SemanticLabels" / SIFT / f"{i}.mat", semantic)
            scipy.io.savemat(base / "GeoLabels" / SIFT / f"{i}.mat", geometric)
    return base


def config(tmp_path, **values) -> TrainConfig:
    """Two steps of batch 2, no augmentation, one thread."""
    base = dict(
        epochs=2, batch_size=2, warmup_iters=0, scale_range=None, jitter=False, flip=False,
        num_workers=0, log_every=1, overlays=1, output=str(tmp_path), name="run", threads=1,
        train_split="train", val_split="test",
    )  # fmt: skip
    base.update(values)
    return TrainConfig(**base)


def nyud_config(tmp_path, model: str, modalities: list[str], **values) -> TrainConfig:
    options = {"modalities": modalities}
    root = str(make_nyud(tmp_path / "data"))
    return config(
        tmp_path, model=model, dataset="nyud", root=root, train_options=options,
        val_options=options, **values,
    )  # fmt: skip


def random_heads(fcn: nn.Module, seed: int) -> nn.Module:
    """Score layers start at zero; give them weights so that each stream matters."""
    torch.manual_seed(seed)
    for module in fcn.head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.normal_(module.bias, std=0.1)
    return fcn.eval()


def save(fcn: FCN, path) -> str:
    classes, palette = list(NYUD_CLASSES), voc_palette(len(NYUD_CLASSES))
    ckpt.save_checkpoint(record_of(fcn, classes=classes, palette=palette), path)
    return str(path)


def run_config(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / name / "config.json").read_text())


def config_file(tmp_path, **values) -> str:
    """``config``'s two steps of batch 2 as a file, for ``fcnseg train --config``."""
    base = dict(
        epochs=1, batch_size=2, warmup_iters=0, scale_range=None, jitter=False, flip=False,
        num_workers=0, log_every=1, overlays=0, output=str(tmp_path), threads=1,
        train_split="train", val_split="test",
    )  # fmt: skip
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**base, **values}))
    return str(path)


# ------------------------------------------------------------------------------------ tests


def predict(checkpoint, out, *inputs) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), *map(str, inputs), "--out", str(out)])


def mask(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_rgbd_early_fusion_trains_saves_and_predicts(tmp_path, one_thread, capsys):
    result = train(nyud_config(tmp_path, "fcn32s_slim_rgbd", ["color", "depth"]))
    assert result.iterations == 2 and result.stopped == "finished"
    best = ckpt.load_checkpoint(result.best_checkpoint)
    inputs = best.spec.to_dict()["inputs"]
    assert inputs["depth"] == {
        "channels": 1,
        "normalization": {"kind": "log_depth", "mean": 7.844},  # log depth: its mean only
    }
    assert inputs["color"]["normalization"]["bgr"] is True
    assert best.state_dict["backbone.conv1_1.weight"].shape[1] == 4
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    depth = np.full((H, W), 2000, dtype=np.float32)
    prediction = segmenter.predict({"color": rgb(0), "depth": depth})
    assert prediction.shape == (H, W) and prediction.max() < 40
    with pytest.raises(ValueError, match="reads"):
        segmenter.predict(rgb(0))  # the depth is missing

    # fcnseg predict: one file per input, or folders paired by stem (NYUDv2's own layout)
    data = tmp_path / "data" / "nyud" / "data"
    color, depth_png = data / "images" / "img_5001.png", data / "depth" / "img_5001.png"
    one = tmp_path / "one"
    assert predict(result.best_checkpoint, one, f"--input=color={color}", "--input", f"depth={depth_png}") == 0  # fmt: skip
    expected = segmenter.predict({"color": color, "depth": depth_png})
    assert np.array_equal(mask(one / "img_5001.png"), expected)
    assert Image.open(one / "img_5001_overlay.png").size[0] > 0
    Image.fromarray(rgb(9)).save(data / "images" / "img_9999.png")  # a colour image without depth
    folders = tmp_path / "folders"
    args = ["--input", f"color={data / 'images'}", "--input", f"depth={data / 'depth'}"]
    assert predict(result.best_checkpoint, folders, *args) == 1  # one stem failed
    out = capsys.readouterr().out
    assert "3 image(s) predicted" in out and "img_9999.png: no depth file with the stem" in out
    for stem in ("img_5001", "img_5003", "img_5004"):
        files = {"color": data / "images" / f"{stem}.png", "depth": data / "depth" / f"{stem}.png"}
        assert np.array_equal(mask(folders / f"{stem}.png"), segmenter.predict(files)), stem


def test_predict_tells_how_to_give_the_inputs_of_a_multi_input_model(tmp_path, one_thread, capsys):
    path = save(slim("fcn32s_slim_rgbd"), tmp_path / "rgbd.pt")
    image = tmp_path / "photo.png"
    Image.fromarray(rgb(0)).save(image)
    assert predict(path, tmp_path / "out", image) == 2
    assert "reads color + depth: give each input as --input color=PATH --input depth=PATH" in capsys.readouterr().err  # fmt: skip
    assert predict(path, tmp_path / "out", "--input", f"colour={image}") == 2
    assert "has no input 'colour'; it reads color, depth" in capsys.readouterr().err
    assert predict(path, tmp_path / "out", "--input", str(image)) == 2
    assert "is not NAME=PATH" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(small)
    assert predict(path, tmp_path / "out", "--input", f"color={image}", "--input", f"depth={small}") == 1  # fmt: skip
    assert "the inputs differ in size (color 32x32, depth 16x16)" in capsys.readouterr().out


def test_late_fusion_from_two_stream_checkpoints_starts_at_their_mean(tmp_path, one_thread):
    torch.manual_seed(0)
    color = random_heads(slim(), seed=1)
    hha = random_heads(slim("fcn32s_slim_hha"), seed=2)
    streams = {"color": save(color, tmp_path / "rgb.pt"), "hha": save(hha, tmp_path / "hha.pt")}
    start = TrainConfig(model="fcn32s_slim_rgbhha_late", init_streams=streams)
    spec = resolve_spec(start.model, num_classes=40)
    fused = build_model_for(start, spec, init=True).eval()
    x = {"color": torch.randn(1, 3, H, W), "hha": torch.randn(1, 3, H, W)}
    with torch.no_grad():
        expected = 0.5 * color(x["color"]) + 0.5 * hha(x["hha"])
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    wrong = TrainConfig(model="fcn32s_slim_rgbhha_late", init_streams={"color": streams["color"]})
    with pytest.raises(ValueError, match="one checkpoint per stream"):
        build_model_for(wrong, spec, init=True)


def test_late_fusion_trains_from_streams_and_reloads(tmp_path, one_thread):
    streams = {
        "color": save(random_heads(slim(), seed=1), tmp_path / "rgb.pt"),
        "hha": save(random_heads(slim("fcn32s_slim_hha"), seed=2), tmp_path / "hha.pt"),
    }
    cfg = nyud_config(
        tmp_path, "fcn32s_slim_rgbhha_late", ["color", "hha"], init_streams=streams, epochs=1
    )
    result = train(cfg)
    assert result.iterations == 1
    best = ckpt.load_checkpoint(result.best_checkpoint)
    assert best.spec.input_names == ("color", "hha") and best.spec.fusion == "late"
    hha_norm = best.spec.inputs[1].normalization
    assert hha_norm.mean == pytest.approx([132.431, 94.076, 118.477])
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    assert segmenter.predict({"color": rgb(0), "hha": rgb(1)}).shape == (H, W)
    data = tmp_path / "data" / "nyud" / "data"  # one file per input: paired whatever the names
    color, hha = data / "images" / "img_5003.png", data / "hha" / "img_5004.png"
    out = tmp_path / "out"
    assert predict(result.best_checkpoint, out, "--input", f"hha={hha}", "--input", f"color={color}") == 0  # fmt: skip
    expected = segmenter.predict({"color": color, "hha": hha})
    assert np.array_equal(mask(out / "img_5003.png"), expected)  # named after the first input


def test_siftflow_two_heads_train_with_task_metrics_and_predict_both_maps(tmp_path, one_thread):
    root = str(make_siftflow(tmp_path / "data"))
    cfg = config(
        tmp_path, model="fcn16s_slim_siftflow", dataset="siftflow", root=root,
        train_split="trainval", task_weights={"semantic": 1.0, "geometric": 0.5},
    )  # fmt: skip
    result = train(cfg)
    assert result.iterations == 2
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if r["event"] == "val"]
    assert len(val) == 2
    assert val[-1]["geometric"]["pixel_acc"] >= 0 and "present" in val[-1]["semantic"]
    assert val[-1]["mean_iu"] == val[-1]["semantic"]["mean_iu"]  # best by semantic mean IU
    with (run / "val.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))  # per task, per class by the task's class names
    assert len(rows) == 2 and float(rows[-1]["geometric/iu/vertical"]) >= 0
    columns = {"mean_iu", "semantic/mean_iu", "semantic/iu/awning", "geometric/acc/sky"}
    assert columns <= set(rows[0])
    best = ckpt.load_checkpoint(result.best_checkpoint)
    assert len(best.classes["semantic"]) == 33 and len(best.classes["geometric"]) == 3
    assert best.confusion["geometric"].shape == (3, 3)
    assert best.metrics["semantic"]["mean_iu"] == pytest.approx(result.best_mean_iu)
    image = tmp_path / "data" / "SiftFlowDataset" / "Images" / SIFT / "mountain_c3.jpg"
    out = tmp_path / "out"
    assert predict(result.best_checkpoint, out, image) == 0
    semantic = Image.open(out / "mountain_c3_semantic.png")
    assert Image.open(out / "mountain_c3_geometric_overlay.png").size[0] == max(W, 240)
    geometric = Image.open(out / "mountain_c3_geometric.png")
    assert semantic.mode == "P" and semantic.size == (W, H)
    assert np.asarray(geometric).max() < 3
    report = out / "eval.json"
    args = ["eval", "--checkpoint", str(result.best_checkpoint), "--data", "siftflow"]
    assert main([*args, "--root", root, "--split", "test", "--workers", "0", "--out", str(report)]) == 0  # fmt: skip
    metrics = json.loads(report.read_text())
    assert metrics["geometric"]["pixel_acc"] == pytest.approx(
        best.metrics["geometric"]["pixel_acc"]
    )
    # Dice (or focal) applies to every task of a multi-task model
    dice = build_criterion(
        dataclasses.replace(cfg, loss="dice").resolved(), _Labels(best), best.spec
    )
    assert {task: loss.loss for task, loss in dice.losses.items()} == {
        "semantic": "dice",
        "geometric": "dice",
    }


class _Labels:
    """What the criterion reads of a run's data: the ignore label."""

    def __init__(self, record) -> None:
        self.ignore_index = record.ignore_index


# --------------------------------------------- every spec field from fcnseg train (issue 12)


def test_train_sets_the_fusion_and_the_inputs_of_a_fusion_net(tmp_path, one_thread):
    root = str(make_nyud(tmp_path / "data"))
    nyud = {"dataset": "nyud", "root": root}
    both = {"modalities": ["color", "depth"]}
    cfg = config_file(tmp_path, **nyud, train_options=both, val_options=both)
    late = ["model=fcn32s_slim_rgbd", "fusion=late", "fusion_weights=[0.25, 0.75]"]
    assert main(["train", "--config", cfg, "--run-dir", str(tmp_path / "late"), *late]) == 0
    saved = run_config(tmp_path, "late")
    assert saved["model_options"] == {"fusion": "late", "fusion_weights": [0.25, 0.75]}
    record = ckpt.load_checkpoint(tmp_path / "late" / "last.pt")
    assert record.spec.fusion == "late" and record.spec.fusion_weights == (0.25, 0.75)
    assert record.state_dict["backbone.depth.conv1_1.weight"].shape[1] == 1
    assert record.state_dict["backbone.color.conv1_1.weight"].shape[1] == 3
    assert record.build().late_fusion
    data = tmp_path / "data" / "nyud" / "data"
    out = tmp_path / "out"
    args = ["--input", f"color={data / 'images'}", "--input", f"depth={data / 'depth'}"]
    assert predict(tmp_path / "late" / "last.pt", out, *args) == 0
    assert mask(out / "img_5004.png").shape == (H, W)

    hha = {"modalities": ["color", "hha"]}  # a plain model made to read color + HHA stacked
    cfg = config_file(tmp_path, **nyud, train_options=hha, val_options=hha)
    early = ["model=fcn32s_slim", "inputs={color = 3, hha = 3}"]
    assert main(["train", "--config", cfg, "--run-dir", str(tmp_path / "early"), *early]) == 0
    assert run_config(tmp_path, "early")["model_options"] == {"inputs": {"color": 3, "hha": 3}}
    record = ckpt.load_checkpoint(tmp_path / "early" / "best.pt")
    assert record.spec.input_channels == {"color": 3, "hha": 3} and record.spec.fusion == "early"
    assert record.state_dict["backbone.conv1_1.weight"].shape[1] == 6


def test_a_plain_model_given_two_tasks_trains_checkpoints_and_evaluates(tmp_path, one_thread):
    """Issue 12: a multi-task net built with tasks=... wrote a checkpoint nothing could load."""
    root = str(make_siftflow(tmp_path / "data"))
    cfg = config_file(tmp_path, dataset="siftflow", root=root, train_split="trainval")
    tasks = ["model=fcn32s_slim", "tasks={semantic = 33, geometric = 3}"]
    assert main(["train", "--config", cfg, "--run-dir", str(tmp_path / "two"), *tasks]) == 0
    assert run_config(tmp_path, "two")["model_options"] == {
        "tasks": {"semantic": 33, "geometric": 3}
    }
    best = tmp_path / "two" / "best.pt"
    record = ckpt.load_checkpoint(best)
    assert record.spec.name == "fcn32s_slim" and record.spec.task_classes == SIFTFLOW_TASKS
    assert set(fcnseg.load_weights(best).task_heads()) == {"semantic", "geometric"}
    report = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(best), "--data", "siftflow", "--root", root]
    assert main([*args, "--split", "test", "--workers", "0", "--out", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["geometric"]["pixel_acc"] == pytest.approx(record.metrics["geometric"]["pixel_acc"])  # fmt: skip
    image = tmp_path / "data" / "SiftFlowDataset" / "Images" / SIFT / "coast_a1.jpg"
    assert predict(best, tmp_path / "out", image) == 0
    assert mask(tmp_path / "out" / "coast_a1_geometric.png").max() < 3


def test_num_classes_of_a_two_headed_model_is_an_error_not_ignored(tmp_path):
    """Issue 12: num_classes in the config of a multi-task model was silently ignored."""
    root = str(make_siftflow(tmp_path / "data"))
    cfg = config(
        tmp_path, model="fcn16s_slim_siftflow", dataset="siftflow", root=root,
        train_split="trainval", model_options={"num_classes": 33},
    )  # fmt: skip
    with pytest.raises(ValueError, match="set their classes with tasks=.*not num_classes"):
        train(cfg)
    assert not (tmp_path / "run").exists()
