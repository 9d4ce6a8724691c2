"""Engines: onnxruntime and OpenVINO give torch's scores; the export cache is made once per
checkpoint contents; bad engines and mismatched files are one-line errors.

Models are the tiny VGG16 (``slim_models.TINY``, caffe geometry: pad 100, ceil-mode pools,
crops) as a plain net, an RGB-D net (two inputs) and a SIFT Flow net (two tasks), so
multi-input and multi-task models are checked on every engine. Tolerance: 1e-4 of the
largest logit (or 1e-4 absolute below 1), what ``fcnseg export``'s own check allows; fp32
reordered sums differ by ~1e-6 here.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from slim_models import KINDS, TINY, TinyVGG, raw_images, tiny_checkpoint

from fcnseg import engines
from fcnseg.fileio import file_digest
from fcnseg.inference import Segmenter
from fcnseg.models import registered_spec
from fcnseg.models.backbones import BACKBONES
from fcnseg.tiling import Tiling
from fcnseg.tta import TTA

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

pytestmark = [pytest.mark.onnx, pytest.mark.usefixtures("one_thread")]

SIZES = ((45, 61), (33, 50), (64, 64))
ONNX_ENGINES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module", autouse=True)
def tiny_backbone():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES, TINY, TinyVGG)
        yield


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_checkpoint(request, tmp_path_factory, tiny_vgg_file):
    if request.param == "plain":
        return tiny_vgg_file()
    folder = tmp_path_factory.mktemp(request.param)
    return tiny_checkpoint(folder / "model.pt", request.param)


@pytest.fixture
def plain_checkpoint(tiny_vgg_file):
    return tiny_vgg_file()


@pytest.fixture
def seven_class_checkpoint(tiny_vgg_file):
    return tiny_vgg_file(classes=7)


def _needs(engine: str) -> None:
    if not engines.installed(engine):
        pytest.skip(f"engine {engine} is not installed (pip install 'fcnseg[{engine}]')")


def _single(spec, images):
    return images if len(spec.inputs) > 1 else images[spec.input_names[0]]


@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_engine_scores_equal_torch(engine, kind_checkpoint):
    _needs(engine)
    reference = Segmenter.from_checkpoint(kind_checkpoint, engine="torch")
    segmenter = Segmenter.from_checkpoint(kind_checkpoint, engine=engine)
    assert segmenter.engine == engine and segmenter.tasks == reference.tasks
    for seed, (height, width) in enumerate(SIZES):
        batch = reference.batch(
            _single(reference.spec, raw_images(reference.spec, height, width, seed))
        )
        expected, got = reference.scores(batch), segmenter.scores(batch)
        for task, scores in expected.items():
            assert got[task].shape == scores.shape == (1, scores.shape[1], height, width)
            scale = max(1.0, float(scores.abs().max()))
            assert float((got[task] - scores).abs().max()) < 1e-4 * scale, (engine, task)


@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_the_engine_takes_the_arg_max_itself_and_agrees(engine, kind_checkpoint, monkeypatch):
    """Issue 31: label maps come from an arg-max inside the engine's graph (no scores
    copied out), equal to the arg-max of the scores it gives; probabilities, tiles and TTA
    still go through the scores."""
    _needs(engine)
    segmenter = Segmenter.from_checkpoint(kind_checkpoint, engine=engine)
    calls = []
    labels = segmenter.model.runner.labels
    monkeypatch.setattr(segmenter.model.runner, "labels", lambda x: calls.append(1) or labels(x))
    for seed, (height, width) in enumerate(SIZES):
        image = _single(segmenter.spec, raw_images(segmenter.spec, height, width, seed))
        fused, _ = segmenter.label_maps(image)
        from_scores, _ = segmenter.label_maps(image, probabilities=True)
        for task, expected in from_scores.items():
            assert fused[task].dtype == expected.dtype == np.uint8
            assert np.array_equal(fused[task], expected), (engine, task)
    assert len(calls) == len(SIZES)
    segmenter.tta = TTA(flip=True)
    segmenter.predict(image)
    assert len(calls) == len(SIZES)  # TTA averages scores: the engine's arg-max is not used


def test_openvino_compiles_a_size_seen_twice_for_its_shape(plain_checkpoint, monkeypatch):
    """Issue 31: a model compiled for its input shape ran 4-11% faster than the one for any
    size; the second call of a size compiles it, and the last STATIC_SHAPES are kept."""
    _needs("openvino")
    monkeypatch.setattr(engines, "STATIC_SHAPES", 2)
    segmenter = Segmenter.from_checkpoint(plain_checkpoint, engine="openvino")
    runner = segmenter.model.runner
    images = {size: raw_images(segmenter.spec, *size, 0)["image"] for size in SIZES}
    first = {size: segmenter.predict(image, probabilities=True) for size, image in images.items()}
    assert not runner.static  # each size seen once: the dynamic model ran them
    for size in SIZES:
        labels, probs = segmenter.predict(images[size], probabilities=True)
        assert np.array_equal(labels, first[size][0])
        np.testing.assert_allclose(probs, first[size][1], atol=1e-5)
    assert [shape[0][2:] for shape in runner.static] == list(SIZES[1:])  # the oldest dropped


@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_engine_tiled_prediction_matches_torch_tiled(engine, plain_checkpoint):
    _needs(engine)
    path = plain_checkpoint
    tiling = Tiling.of((48, 40), overlap=(16, 10))
    image = raw_images(Segmenter.from_checkpoint(path).spec, 45, 61)["image"]
    reference = Segmenter.from_checkpoint(path, tiling=tiling).predict(image, probabilities=True)
    got = Segmenter.from_checkpoint(path, engine=engine, tiling=tiling).predict(
        image, probabilities=True
    )
    np.testing.assert_allclose(got[1], reference[1], atol=1e-5)


@pytest.mark.parametrize("engine", ("torch", *ONNX_ENGINES))
def test_one_segmenter_serves_many_threads(engine, plain_checkpoint):
    """Requests from several threads at once, of mixed sizes, each get their own image's
    result: an engine that shares one request between callers hands out others' masks."""
    _needs(engine)
    segmenter = Segmenter.from_checkpoint(plain_checkpoint, engine=engine)
    images = [raw_images(segmenter.spec, *SIZES[seed % len(SIZES)], seed)["image"]
              for seed in range(6)]  # fmt: skip
    expected = [segmenter.predict(image, probabilities=True) for image in images]
    for (_, first), (_, second) in itertools.combinations(expected, 2):  # a mix-up shows
        assert first.shape != second.shape or np.abs(first - second).max() > 1e-3
    order = [index % len(images) for index in range(24)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda index: segmenter.predict(images[index], True), order))
    for index, (labels, probs) in zip(order, got, strict=True):
        assert np.array_equal(labels, expected[index][0]), (engine, index)
        np.testing.assert_allclose(probs, expected[index][1], atol=1e-6)


def test_export_cache_is_reused_and_follows_the_checkpoint(tmp_path):
    _needs("onnxruntime")
    path = tiny_checkpoint(tmp_path / "model.pt")
    first = engines.cached_onnx(path)
    assert first.parent == tmp_path / engines.CACHE_FOLDER
    assert engines.recorded_source(first) == file_digest(path)
    stamp = first.stat().st_mtime_ns
    assert engines.cached_onnx(path) == first and first.stat().st_mtime_ns == stamp  # reused
    tiny_checkpoint(path, seed=1)  # new weights, same file name
    second = engines.cached_onnx(path)
    assert second != first and engines.recorded_source(second) == file_digest(path)
    assert not [p for p in second.parent.iterdir() if p.name.endswith(".tmp")]


def test_export_cache_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    _needs("onnxruntime")
    path = tiny_checkpoint(tmp_path / "model.pt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    beside = tmp_path / engines.CACHE_FOLDER
    writable = engines._writable
    monkeypatch.setattr(engines, "_writable", lambda folder: folder != beside and writable(folder))
    exported = engines.cached_onnx(path)
    assert exported.parent == tmp_path / "xdg" / "fcnseg" / "onnx"


def test_an_onnx_file_of_another_checkpoint_is_refused(plain_checkpoint, tmp_path):
    _needs("onnxruntime")
    exported = engines.cached_onnx(plain_checkpoint)
    other = tiny_checkpoint(tmp_path / "b.pt", seed=3)
    with pytest.raises(engines.EngineError, match="another checkpoint"):
        engines.check_source(exported, other)


def test_unknown_and_missing_engines_are_one_line(monkeypatch):
    with pytest.raises(engines.EngineError, match="unknown engine 'tensorrt'") as error:
        engines.choose_engine("tensorrt", None)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(engines, "installed", lambda engine: engine == "torch")
    with pytest.raises(engines.EngineError, match=r"pip install 'fcnseg\[openvino\]'"):
        engines.choose_engine("openvino", None)


def test_auto_follows_the_documented_rule(monkeypatch):
    lite0 = registered_spec("fcn8s_efficientnet_lite0")
    vgg = registered_spec("fcn8s_vgg16")
    monkeypatch.setattr(engines, "installed", lambda engine: True)
    assert engines.choose_engine("auto", vgg) == "openvino"
    assert engines.choose_engine("auto", lite0) == "openvino"
    assert engines.choose_engine("auto", lite0, device="cuda") == "torch"
    assert engines.choose_engine("auto", None) == "openvino"
    monkeypatch.setattr(engines, "installed", lambda engine: engine != "openvino")
    assert engines.choose_engine("auto", vgg) == "onnxruntime"
    monkeypatch.setattr(engines, "installed", lambda engine: engine == "torch")
    assert engines.choose_engine("auto", vgg) == "torch"


# ----------------------------------------------------------------------------- the CLI


def test_predict_engine_errors_are_one_line(tmp_path, fcnseg_cli, cli_environment):
    hidden = tmp_path / "hide"
    (hidden / "openvino").mkdir(parents=True)
    (hidden / "openvino" / "__init__.py").write_text("raise ImportError('hidden for a test')\n")
    path = tmp_path / "model.pt"
    path.write_bytes(b"")  # the engine is checked before the file is read
    env = {"PYTHONPATH": f"{hidden}{os.pathsep}{cli_environment['PYTHONPATH']}"}
    for engine, expected, extra in (
        ("tensorrt", "unknown engine 'tensorrt'", {}),
        ("openvino", "engine 'openvino' is not installed", env),
    ):
        result = fcnseg_cli(
            "predict",
            "--checkpoint",
            path,
            "x.png",
            "--out",
            tmp_path / "o",
            "--engine",
            engine,
            env=extra,
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr


def test_a_corrupt_onnx_file_is_one_line_and_the_photos_stay(
    tmp_path, fcnseg_main, one_line_error, file_hashes
):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (90, 120, 30)).save(photos / "street.png")
    damaged = tmp_path / "model.onnx"
    damaged.write_bytes(b"not an onnx model\x81\x00")
    before = file_hashes(tmp_path)
    result = fcnseg_main("predict", "--checkpoint", damaged, photos, "--out", photos)
    assert result.returncode == 2
    line = one_line_error(result)
    assert str(damaged) in line and "not a readable ONNX file" in line
    assert file_hashes(tmp_path) == before


@pytest.mark.parametrize("engine", ONNX_ENGINES)
def test_predict_and_eval_run_on_the_engine_with_tta(
    engine, seven_class_checkpoint, tmp_path, capsys
):
    _needs(engine)
    from fcnseg.cli import main

    path = seven_class_checkpoint
    image = tmp_path / "photo.png"
    Image.fromarray(raw_images(Segmenter.from_checkpoint(path).spec, 45, 61)["image"]).save(image)
    tta = ["--tta", "--tta-scales", "0.75,1"]
    assert main(["predict", "--checkpoint", str(path), str(image), "--out", str(tmp_path / "o"),
                 "--engine", engine, "--no-overlay", *tta]) == 0  # fmt: skip
    assert (tmp_path / "o" / "photo.png").is_file()
    assert main(["eval", "--checkpoint", str(path), "--data", "synthetic", "--option", "size=48",
                 "--option", "num_images=2", "--workers", "0", "--engine", engine, *tta,
                 "--out", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    assert f"engine {engine}, TTA scales [0.75, 1.0] + flip" in capsys.readouterr().out
