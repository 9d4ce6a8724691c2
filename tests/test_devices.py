"""What a machine with a GPU meets, proven on the CPU.

The meta device stands in for the GPU: a tensor on it meets a CPU tensor only by error, so
a model left on the CPU while its batches move, or scores that come back on the CPU while
the labels moved, show here as they would on a GPU. The CUDA functions a resume calls are
faked to be a machine with one GPU.
"""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from slim_models import TINY, TinyVGG
from torch.overrides import TorchFunctionMode

import fcnseg
from fcnseg import inference
from fcnseg.builder import resolve_spec
from fcnseg.cli import main
from fcnseg.commands import evaluate as evaluate_command
from fcnseg.config import TrainConfig
from fcnseg.data import SYNTHETIC_CLASSES, voc_palette
from fcnseg.engines import EngineModule, installed
from fcnseg.models import FCN, registered_spec
from fcnseg.models.backbones import BACKBONES
from fcnseg.speed import fast_forward, native_bf16
from fcnseg.training import checkpoint as ckpt
from fcnseg.training import distributed, setup
from fcnseg.training.optim import amp_dtype
from fcnseg.training.resume import restore_scaler

pytestmark = pytest.mark.usefixtures("one_thread")

META = torch.device("meta")


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """FCN-32s on a tiny VGG for the synthetic classes, saved as a checkpoint."""
    monkeypatch.setitem(BACKBONES, TINY, TinyVGG)
    classes = list(SYNTHETIC_CLASSES)
    spec = registered_spec("fcn32s_vgg16")
    spec = dataclasses.replace(spec, backbone=TINY, name=None, tasks={"semantic": len(classes)})
    model = fcnseg.build_model(spec)
    palette = voc_palette(len(classes))
    return fcnseg.save_weights(tmp_path / "best.pt", model, classes=classes, palette=palette)


def _eval_args(checkpoint, *more):
    return [
        "eval", "--checkpoint", str(checkpoint), "--data", "synthetic", "--option", "size=32",
        "--option", "num_images=2", "--workers", "0", *map(str, more),
    ]  # fmt: skip


@pytest.fixture
def eval_on_meta(monkeypatch):
    """``fcnseg eval`` whose device (``--device auto`` on a GPU machine) is the meta device."""
    monkeypatch.setattr(evaluate_command, "resolve_device", lambda name: META)


class _Forwarded(Exception):
    """The model's first forward was reached."""


@pytest.fixture
def first_forward(monkeypatch):
    """Each FCN forward records the devices of the model's weights and inputs, then stops
    the command: a meta model cannot run (its upsampling reads its kernels' values)."""
    seen = []

    def forward(self, x, *, by_task=False):
        seen.append({tensor.device for tensor in [*self.parameters(), *x.values()]})
        raise _Forwarded

    monkeypatch.setattr(FCN, "forward", forward)
    return seen


# ---------------------------------------------------------------------------- the torch engine


@pytest.mark.parametrize("per_image", [False, True])
def test_eval_runs_the_model_where_its_batches_go(
    tmp_path, checkpoint, eval_on_meta, first_forward, per_image
):
    more = ["--per-image", tmp_path / "scores.csv"] if per_image else []
    with pytest.raises(_Forwarded):
        main(_eval_args(checkpoint, *more))
    assert first_forward == [{META}]


# ------------------------------------------------------------------------------ ONNX engines


class _HostCopies(TorchFunctionMode):
    """Meta tensors copy to the CPU as zeros, as a GPU's copy with their values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cpu and args[0].is_meta:
            return torch.zeros(args[0].shape, dtype=args[0].dtype)
        return func(*args, **kwargs or {})


def test_an_onnx_engine_gives_its_scores_on_the_device_of_its_inputs():
    spec = resolve_spec("fcn32s_efficientnet_lite0", num_classes=3)
    task = spec.task_names[0]
    runner = lambda inputs: {task: np.zeros((1, 3, 8, 8), np.float32)}  # noqa: E731
    module = EngineModule(runner, spec, "onnxruntime")
    with _HostCopies():
        scores = module({spec.input_names[0]: torch.empty(1, 3, 8, 8, device=META)})
    assert {s.device for s in scores.values()} == {META}


@pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime and the ONNX exporter")
def test_eval_on_an_onnx_engine_keeps_its_batches_on_the_cpu_and_says_so(
    checkpoint, eval_on_meta, capsys
):
    """The engine runs on the CPU whatever --device names: the batches stay there, and a
    device named but not used is one warning line."""
    args = _eval_args(checkpoint, "--engine", "onnxruntime", "--device", "cuda")
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "fcnseg: warning: engine onnxruntime runs on the CPU: --device cuda is not used "
        "(--engine torch runs the model there)"
    ]
    assert main([*args[:-2], "--device", "auto"]) == 0
    assert capsys.readouterr().err == ""  # not named: nothing to warn of


# ------------------------------------------------------------------- resuming on fewer GPUs


@pytest.fixture
def one_gpu(monkeypatch):
    """torch.cuda as a machine that sees one GPU: setting another GPU's generator raises
    as CUDA does; the states set are recorded by GPU index."""
    restored = {}

    def set_rng_state(state, device="cuda"):
        index = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        index = index.index or 0
        if index >= 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored[index] = state

    for module in (torch.cuda, torch.cuda.random):  # set_rng_state_all calls the latter's
        monkeypatch.setattr(module, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return restored


def _weights_only(state, path):
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def test_generators_saved_from_four_gpus_resume_on_one(tmp_path, one_gpu):
    gpus = [torch.full((16,), gpu, dtype=torch.uint8) for gpu in range(4)]
    saved = _weights_only({**ckpt.rng_state(), "cuda": gpus}, tmp_path / "rng.pt")
    ckpt.set_rng_state(saved, torch.device("cuda", 0))
    assert list(one_gpu) == [0] and torch.equal(one_gpu[0], gpus[0])


def test_a_process_saves_and_restores_its_own_gpu_generator(tmp_path, one_gpu, monkeypatch):
    own = torch.arange(16, dtype=torch.uint8)
    asked = []
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": asked.append(device) or own
    )
    saved = _weights_only(ckpt.rng_state(torch.device("cuda", 0)), tmp_path / "rng.pt")
    assert asked == [torch.device("cuda", 0)] and torch.equal(saved["cuda"], own)
    ckpt.set_rng_state(saved, torch.device("cuda", 0))
    assert list(one_gpu) == [0] and torch.equal(one_gpu[0], own)
    ckpt.set_rng_state(saved)  # on the CPU the GPU's generator is left alone
    assert list(one_gpu) == [0]


# ---------------------------------------------------------------- fp16 after a run without it


@pytest.fixture
def train_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(
        'model = "fcn32s_efficientnet_lite0"\n'
        "train_options = { size = 32, num_images = 2 }\n"
        "val_options = { size = 32, num_images = 1 }\n"
        "epochs = 1\nbatch_size = 2\nnum_workers = 0\nthreads = 1\noverlays = 0\n"
        'scale_range = [1.0, 1.0]\ncrop_size = 32\ndevice = "cpu"\n'
    )
    return path


def test_a_run_saved_without_a_scaler_resumes_with_fp16(tmp_path, train_config, monkeypatch):
    """amp = fp16 needs a GPU, so the resumed run's fp16 is asked of the setup directly:
    its scaler is on (GradScaler runs on the CPU too) where the saved one was off."""
    run = tmp_path / "run"
    assert main(["train", "--config", str(train_config), "--run-dir", str(run)]) == 0
    monkeypatch.setattr(setup, "amp_dtype", lambda amp, device: torch.float16)
    assert main(["train", "--resume", str(run), "epochs=2"]) == 0
    assert ckpt.load_checkpoint(run / "last.pt").training["scaler"]["scale"] > 0


def test_an_empty_scaler_state_leaves_the_scaler_as_built():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    restore_scaler(scaler, torch.amp.GradScaler("cpu", enabled=False).state_dict())
    assert scaler.get_scale() == 1024.0
    restore_scaler(scaler, torch.amp.GradScaler("cpu", init_scale=8.0).state_dict())
    assert scaler.get_scale() == 8.0


# ------------------------------------------------------------------------ out of GPU memory


def _out_of_memory_in(monkeypatch, mode: str) -> None:
    """The model's forward in ``mode`` (train or eval) raises torch's CUDA out-of-memory
    error; in the other mode it runs."""
    forward = FCN.forward

    def short_of_memory(self, x, *, by_task=False):
        if self.training == (mode == "train"):
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                "of 7.79 GiB of which 1.02 GiB is free.\nOf the allocated memory ..."
            )
        return forward(self, x, by_task=by_task)

    monkeypatch.setattr(FCN, "forward", short_of_memory)


@pytest.mark.parametrize(
    ("mode", "phase", "fix"),
    [
        ("train", "a training step", "lower batch_size or crop_size"),
        ("eval", "validation", "val_batch_size"),
    ],
)
def test_training_out_of_gpu_memory_is_one_line(
    tmp_path, train_config, monkeypatch, capsys, mode, phase, fix
):
    _out_of_memory_in(monkeypatch, mode)
    assert main(["train", "--config", str(train_config), "--run-dir", str(tmp_path / "run")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fcnseg: error: the GPU ran out of memory in {phase} (fcnseg train)")
    assert fix in line


def test_eval_out_of_gpu_memory_is_one_line(checkpoint, monkeypatch, capsys):
    _out_of_memory_in(monkeypatch, "eval")
    assert main(_eval_args(checkpoint)) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "fcnseg: error: the GPU ran out of memory in evaluation (fcnseg eval): evaluate on the "
        "CPU (--device cpu), or on smaller images"
    )


@pytest.fixture
def gpu_of(monkeypatch):
    """torch.cuda as a machine with one GPU of the given compute capability, whose
    ``is_bf16_supported`` counts emulation unless asked not to (as torch's does)."""

    def fake(capability: tuple[int, int], *, emulation_argument: bool = True) -> None:
        native = capability >= (8, 0)

        def with_argument(including_emulation: bool = True) -> bool:
            return True if including_emulation else native

        def without_argument() -> bool:
            return True

        supported = with_argument if emulation_argument else without_argument
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)

    return fake


@pytest.mark.parametrize("emulation_argument", [True, False])
@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16)],
)
def test_amp_auto_takes_fp16_where_bf16_is_only_emulated(
    gpu_of, capability, dtype, emulation_argument
):
    gpu_of(capability, emulation_argument=emulation_argument)
    assert amp_dtype("auto", torch.device("cuda", 0)) is dtype
    assert native_bf16("cuda") is (dtype is torch.bfloat16)


def test_under_torchrun_one_gpu_index_for_every_rank_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="names one GPU for all 2 torchrun processes") as error:
        distributed.setup("cuda:0")
    assert "LOCAL_RANK" in str(error.value) and "\n" not in str(error.value)
    asked = []
    monkeypatch.setattr(torch.cuda, "set_device", asked.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # joined already
    assert distributed.setup("cuda").device == torch.device("cuda", 1)
    assert distributed.setup("cuda:1").device == torch.device("cuda", 1)


def test_channels_last_is_off_only_for_gloo_ranks():
    config = TrainConfig(model="fcn32s_vgg16", dataset="synthetic")
    gpus = distributed.Context(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    cpus = distributed.Context(rank=1, world_size=2)
    assert setup.use_channels_last(config, gpus) and setup.use_channels_last(
        config, distributed.Context()
    )
    assert not setup.use_channels_last(config, cpus)
    assert not setup.use_channels_last(dataclasses.replace(config, channels_last=False), gpus)


@pytest.mark.parametrize("flags", [["--bf16"], ["--compile"]])
def test_predict_and_eval_run_the_model_as_bf16_and_compile_ask(
    checkpoint, tmp_path, monkeypatch, flags
):
    """--bf16 and --compile reach the torch engine's InferenceOptions (compiling is faked:
    the flag, not inductor, is under test)."""
    used = []

    def recorded(model, batch, options=None):
        used.append(options)
        return fast_forward(model, batch, options)

    monkeypatch.setattr(inference, "fast_forward", recorded)
    monkeypatch.setattr(torch, "compile", lambda model, **options: model)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(image)
    out = tmp_path / "masks"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), *flags, "--out", str(out), str(image)])
        == 0
    )
    assert main([*_eval_args(checkpoint, *flags), "--out", str(tmp_path / "eval.json")]) == 0
    bf16, compile_ = "--bf16" in flags, "--compile" in flags
    assert used and all(o.bf16 is bf16 and o.compile is compile_ for o in used)
