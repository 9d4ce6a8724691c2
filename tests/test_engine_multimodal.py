"""The engine on multi-input (NYUDv2 RGB-D, RGB-HHA late fusion) and multi-task (SIFT Flow
two heads) models: a few steps on tiny datasets in the published formats, checkpoints that
reload and predict, and late fusion started from two single-stream checkpoints."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch import nn

from fcnseg.cli import main
from fcnseg.config import ConfigError, TrainConfig
from fcnseg.data import NYUD_NORMALIZATION, LogDepth
from fcnseg.data.nyud import NYUD_CLASSES
from fcnseg.data.palettes import voc_palette
from fcnseg.engine import checkpoint as ckpt
from fcnseg.engine.train import _build_model, train
from fcnseg.inference import Segmenter
from fcnseg.models import FCN, FCNHead, registry
from fcnseg.models.backbones import VGG16
from fcnseg.models.fusion import MultiModalFCN, expand_input_channels, late_fusion
from fcnseg.models.multitask import MULTITASK_MODELS, MultiTaskFCN

H, W = 32, 32
SIFT = "spatial_envelope_256x256_static_8outdoorcategories"


# ------------------------------------------------------------------ slim models, registered


def slim(num_classes: int, variant: str = "32s", name: str = "fcn32s_slim", **_) -> FCN:
    """A VGG16 with a few channels: the same code paths as the paper's, in milliseconds."""
    backbone = VGG16(widths=(4, 4, 8, 8, 8), fc_channels=16, geometry="aligned")
    return FCN(backbone, FCNHead(backbone, num_classes, variant=variant), name=name)


def slim_hha(num_classes: int, **_) -> FCN:
    fcn = slim(num_classes, name="fcn32s_slim_hha")
    fcn.backbone.normalization = NYUD_NORMALIZATION["hha"]
    return fcn


def slim_rgbd(num_classes: int, **_) -> MultiModalFCN:
    fcn = expand_input_channels(slim(num_classes), 1)
    normalization = {"color": fcn.backbone.normalization, "depth": LogDepth()}
    channels = {"color": 3, "depth": 1}
    return MultiModalFCN(
        fcn.backbone, fcn.head, channels=channels, normalization=normalization,
        name="fcn32s_slim_rgbd",
    )  # fmt: skip


def slim_late(num_classes: int, **_):
    streams = {"color": slim(num_classes), "hha": slim_hha(num_classes)}
    return late_fusion(streams, name="fcn32s_slim_rgbhha_late")


def slim_siftflow(**_) -> MultiTaskFCN:
    backbone = VGG16(widths=(4, 4, 8, 8, 8), fc_channels=16, geometry="aligned")
    heads = {task: FCNHead(backbone, n, variant="16s") for task, n in (("semantic", 33), ("geometric", 3))}  # fmt: skip
    return MultiTaskFCN(backbone, heads, name="fcn16s_slim_siftflow")


@pytest.fixture(autouse=True)
def slim_models(monkeypatch):
    for name, builder in (
        ("fcn32s_slim", slim),
        ("fcn32s_slim_hha", slim_hha),
        ("fcn32s_slim_rgbd", slim_rgbd),
        ("fcn32s_slim_rgbhha_late", slim_late),
    ):
        monkeypatch.setitem(registry._MODELS, name, builder)
    monkeypatch.setitem(MULTITASK_MODELS, "fcn16s_slim_siftflow", slim_siftflow)


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
    ckpt.save_checkpoint(ckpt.make_checkpoint(fcn, classes=classes, palette=palette), path)
    return str(path)


# ------------------------------------------------------------------------------------ tests


def test_rgbd_early_fusion_trains_saves_and_predicts(tmp_path, one_thread):
    result = train(nyud_config(tmp_path, "fcn32s_slim_rgbd", ["color", "depth"]))
    assert result.iterations == 2 and result.stopped == "finished"
    best = ckpt.load_checkpoint(result.best_checkpoint)
    assert best["normalization"]["depth"] == {"mean": 7.844}  # log depth: its mean only
    assert best["normalization"]["color"]["bgr"] is True
    assert best["state_dict"]["backbone.conv1_1.weight"].shape[1] == 4
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    depth = np.full((H, W), 2000, dtype=np.float32)
    prediction = segmenter.predict({"color": rgb(0), "depth": depth})
    assert prediction.shape == (H, W) and prediction.max() < 40
    with pytest.raises(ValueError, match="reads"):
        segmenter.predict(rgb(0))  # the depth is missing


def test_late_fusion_from_two_stream_checkpoints_starts_at_their_mean(tmp_path, one_thread):
    torch.manual_seed(0)
    color = random_heads(slim(40), seed=1)
    hha = random_heads(slim_hha(40), seed=2)
    streams = {"color": save(color, tmp_path / "rgb.pt"), "hha": save(hha, tmp_path / "hha.pt")}
    start = TrainConfig(model="fcn32s_slim_rgbhha_late", init_streams=streams)
    fused = _build_model(start, 40, init=True).eval()
    x = {"color": torch.randn(1, 3, H, W), "hha": torch.randn(1, 3, H, W)}
    with torch.no_grad():
        expected = 0.5 * color(x["color"]) + 0.5 * hha(x["hha"])
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    wrong = TrainConfig(model="fcn32s_slim_rgbhha_late", init_streams={"color": streams["color"]})
    with pytest.raises(ValueError, match="one checkpoint per stream"):
        _build_model(wrong, 40, init=True)


def test_late_fusion_trains_from_streams_and_reloads(tmp_path, one_thread):
    streams = {
        "color": save(random_heads(slim(40), seed=1), tmp_path / "rgb.pt"),
        "hha": save(random_heads(slim_hha(40), seed=2), tmp_path / "hha.pt"),
    }
    cfg = nyud_config(
        tmp_path, "fcn32s_slim_rgbhha_late", ["color", "hha"], init_streams=streams, epochs=1
    )
    result = train(cfg)
    assert result.iterations == 1
    best = ckpt.load_checkpoint(result.best_checkpoint)
    assert set(best["normalization"]) == {"color", "hha"}
    assert best["normalization"]["hha"]["mean"] == pytest.approx([132.431, 94.076, 118.477])
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    assert segmenter.predict({"color": rgb(0), "hha": rgb(1)}).shape == (H, W)


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
    assert len(best["classes"]["semantic"]) == 33 and len(best["classes"]["geometric"]) == 3
    assert best["confusion"]["geometric"].shape == (3, 3)
    assert best["metrics"]["semantic"]["mean_iu"] == pytest.approx(result.best_mean_iu)
    image = tmp_path / "data" / "SiftFlowDataset" / "Images" / SIFT / "mountain_c3.jpg"
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(result.best_checkpoint), str(image), "--out", str(out)])  # fmt: skip
    assert code == 0
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
        best["metrics"]["geometric"]["pixel_acc"]
    )
    with pytest.raises(ConfigError, match="loss = 'dice': multi-task models train with cross_entropy"):  # fmt: skip
        train(dataclasses.replace(cfg, loss="dice", name="dice"))
