"""ONNX export with dynamic batch, height and width, and a small onnxruntime runner.

The exported graph takes what ``FCN.forward`` takes (N x C x H x W, already normalised)
and returns N x classes x H x W logits. The crops and fusions of the FCN head are
computed from the tensor shapes inside the graph, so one file serves every image size.

Exporter: torch's torch.export-based one (``torch.onnx.export(dynamo=True)``, the
default since torch 2.9; it needs the onnxscript package). It traces with symbolic
sizes, so the head's size arithmetic (``min``, ``max``, the replicated borders of the
crops) becomes graph operations. Height and width are ``Dim.DYNAMIC``: with named
``Dim``s torch.export tries to prove every size guard of the caffe-geometry nets
(ceil-mode pooling, pad 100) as a linear constraint and stops on ones it cannot state,
though they hold for every size. The TorchScript exporter (``dynamo=False``) would
record each Python ``min``/``max``/``if`` on a size as a constant of the example and
give wrong crops at other sizes. ``check_onnx`` compares a file with PyTorch at sizes
unlike the traced example, which would show any size baked in.

Opset 18 by default: the lowest the exporter writes natively (asking for 17 converts
the graph down afterwards, which works here but is one more step).

The file's metadata (``metadata_props``) records the model name, the class count and
the input normalisation as JSON, for ``load_onnx`` and ``fcnseg predict``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .models import FCN, Normalization
from .weights.files import atomic_write, normalization_from_dict

__all__ = [
    "OnnxCheck",
    "OnnxSegmenter",
    "check_onnx",
    "export_onnx",
    "input_channels",
    "load_onnx",
]

INPUT, OUTPUT = "image", "logits"
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.fx.experimental.symbolic_shapes",
    "torch.export",
    "onnxscript",
)


def _require(module: str):
    try:
        return __import__(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"ONNX support needs the {module} package: pip install 'fcnseg[onnx]'"
        ) from None


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's internal chatter off the user's terminal.

    It logs the torchvision ops it skips, sympy's failures to simplify a size guard
    (harmless: the guard is kept as is), its opset conversion route and pytree
    deprecations. A failed opset conversion is reported by ``export_onnx`` itself.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Trace inference behaviour; a trace in training mode would also move BN statistics."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def input_channels(model: FCN) -> int:
    """The channels the model reads: those of its first convolution (the stem)."""
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.Conv2d):
            return module.in_channels
    raise ValueError(f"{model.name} has no convolution to read the input channels from")


def _metadata(model: FCN) -> dict[str, str]:
    return {
        "fcnseg.model": model.name,
        "fcnseg.num_classes": str(model.num_classes),
        "fcnseg.normalization": json.dumps(asdict(model.normalization)),
    }


def export_onnx(
    model: FCN,
    path: str | Path,
    *,
    opset: int = 18,
    example_size: tuple[int, int, int, int] = (1, 3, 224, 224),
) -> Path:
    """Write ``model`` as one ONNX file with dynamic batch, height and width.

    The graph computes inference behaviour (dropout off, batch norm on its running
    statistics) whatever mode the model is in: the model is traced in eval mode and
    put back in its mode afterwards. ``example_size`` is the traced input's shape; any
    other size runs as well. The file is written atomically.
    """
    _require("onnxscript")  # the exporter's own dependency: fail with the install line
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.zeros(example_size, device=device)
    dynamic = torch.export.Dim.DYNAMIC
    with _quiet_exporter(), _eval_mode(model):
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},),
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; keep it as the cause
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(
                f"{model.name}: the ONNX exporter failed ({first}); try another --opset or "
                "--example-size, or report the model"
            ) from error
    written = program.model.opset_imports.get("")
    if written != opset:  # the exporter keeps its own opset when it cannot convert
        raise ValueError(
            f"the ONNX exporter cannot write opset {opset} for {model.name} (it wrote "
            f"{written}); pass --opset 17 or later"
        )
    program.model.metadata_props.update(_metadata(model))
    return atomic_write(path, lambda tmp: program.save(str(tmp), external_data=False))


class OnnxSegmenter:
    """An exported FCN in onnxruntime: ``runner(images)`` maps N x C x H x W to logits.

    ``images`` are normalised as ``normalization`` says (the model's input convention,
    read from the file; None for a file exported elsewhere). ``name`` and
    ``num_classes`` come from the file too.
    """

    def __init__(self, path: str | Path, *, providers: Sequence[str] | None = None) -> None:
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(
                str(path), providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as error:  # onnxruntime raises its own types for bad files
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{path}: not a loadable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.path = path
        self.name: str | None = meta.get("fcnseg.model")
        classes = meta.get("fcnseg.num_classes")
        self.num_classes: int | None = int(classes) if classes else None
        norm = meta.get("fcnseg.normalization")
        self.normalization: Normalization | None = (
            normalization_from_dict(json.loads(norm)) if norm else None
        )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4:
            raise ValueError(f"expected an N x C x H x W batch, got shape {images.shape}")
        batch = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0]


def load_onnx(path: str | Path, *, providers: Sequence[str] | None = None) -> OnnxSegmenter:
    """An onnxruntime session for an exported FCN, callable on numpy batches."""
    return OnnxSegmenter(path, providers=providers)


@dataclass(frozen=True)
class OnnxCheck:
    """PyTorch against onnxruntime at one input size."""

    size: tuple[int, int]
    max_abs_diff: float
    max_abs_logit: float  # the scale the difference is to be read against

    def __str__(self) -> str:
        height, width = self.size
        return (
            f"{height}x{width}: max abs diff {self.max_abs_diff:.2e} "
            f"(logits up to {self.max_abs_logit:.2e})"
        )


def _images(model: FCN, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random 0..255 RGB images normalised as the model expects (random normal otherwise)."""
    if shape[1] != len(model.normalization.mean):
        return torch.randn(shape, generator=generator)
    return model.normalization(torch.rand(shape, generator=generator) * 255)


def check_onnx(
    model: FCN,
    path: str | Path,
    sizes: Sequence[tuple[int, int]] = ((97, 131), (160, 224)),
    *,
    batch: int = 2,
    seed: int = 0,
) -> list[OnnxCheck]:
    """Compare the ONNX file with PyTorch (eval mode) on random images of each size.

    Sizes unlike the traced example show whether the crops really follow the input. A
    different output shape raises; the differences are returned. The model's mode is
    left as it was.
    """
    runner = load_onnx(path)
    generator = torch.Generator().manual_seed(seed)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    channels = runner.session.get_inputs()[0].shape[1]
    checks = []
    with _eval_mode(model):
        for height, width in sizes:
            images = _images(model, (batch, channels, height, width), generator)
            with torch.no_grad():
                expected = model(images.to(device)).cpu().numpy()
            got = runner(images.numpy())
            if got.shape != expected.shape:
                raise ValueError(
                    f"{path}: the ONNX model gives {got.shape} at {height}x{width}, PyTorch "
                    f"{expected.shape}: the export baked a size into the graph"
                )
            diff, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
            checks.append(OnnxCheck((height, width), diff, scale))
    return checks
