"""Inference and training speed on the CPU, as ratios over a textbook PyTorch FCN-8s.

The baseline is FCN-8s VGG16 written the straightforward way (``TextbookFCN8s`` below:
an nn.Sequential VGG16 with pad 100 and ceil-mode pools, nn.ConvTranspose2d upsampling,
crops at 5, 9 and 31), loaded with the same weights as fcnseg's ``fcn8s_vgg16``; the
two outputs are compared. Every configuration runs in a fresh process, so its peak
resident memory (RSS) is its own; the fp32 and bf16 matrix-multiply peaks are measured
in the same run (a large ``torch.mm``), and achieved GFLOP/s is put against them. FLOPs
are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device.

    python benchmarks/speed.py                  # FCN-8s at 500 x 500 + EfficientNet (minutes)
    python benchmarks/speed.py --full           # adds FCN-32s/16s, 1 thread, more training
    python benchmarks/speed.py --compile        # adds torch.compile rows (slow to compile)
    python benchmarks/speed.py --size 256       # quicker, same rows
    python benchmarks/speed.py --only train     # the training rows (and their baseline)
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace

import torch
import torch._inductor.config
import torch.nn.functional as F
from _fresh import in_fresh_process, peak_rss_mib
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fcnseg
from fcnseg.models.backbones import set_activation_checkpointing
from fcnseg.speed import fold_batch_norm

NUM_CLASSES = 21
MIN_SECONDS = 3.0  # each row times at least this long in all, however short its step


class TextbookFCN8s(nn.Module):
    """FCN-8s VGG16 as a PyTorch tutorial writes it: no geometry code, fixed crops."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for convs, width in ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)):
            for _ in range(convs):
                pad = 100 if channels == 3 else 1
                layers += [nn.Conv2d(channels, width, 3, padding=pad), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.to_pool3 = nn.Sequential(*layers[:17])
        self.to_pool4 = nn.Sequential(*layers[17:24])
        self.to_pool5 = nn.Sequential(*layers[24:])
        self.classifier = nn.Sequential(
            nn.Conv2d(512, 4096, 7),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Conv2d(4096, 4096, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Conv2d(4096, num_classes, 1),
        )
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        score = self.upscore2(self.classifier(self.to_pool5(pool4)))
        h, w = score.shape[-2:]
        score = self.upscore_pool4(score + self.score_pool4(pool4)[..., 5 : 5 + h, 5 : 5 + w])
        h, w = score.shape[-2:]
        score = self.upscore8(score + self.score_pool3(pool3)[..., 9 : 9 + h, 9 : 9 + w])
        return score[..., 31 : 31 + x.shape[-2], 31 : 31 + x.shape[-1]].contiguous()


def _ours(name: str, geometry: str | None = None) -> nn.Module:
    """fcnseg's model with seeded random weights; score layers random too (not zero)."""
    torch.manual_seed(0)
    options = {"geometry": geometry} if geometry else {}
    model = fcnseg.build_model(name, num_classes=NUM_CLASSES, **options)
    with torch.no_grad():
        for key, parameter in model.head.named_parameters():
            if key.startswith("score"):
                parameter.normal_(0, 0.01)
    return model


def _textbook() -> TextbookFCN8s:
    """The baseline with fcnseg's fcn8s_vgg16 weights, copied layer by layer in order."""
    ours, book = _ours("fcn8s_vgg16"), TextbookFCN8s()
    backbone = [m for m in ours.backbone.modules() if isinstance(m, nn.Conv2d)]
    features = [m for m in book.modules() if isinstance(m, nn.Conv2d)][:15]  # conv1_1..fc7
    pairs = list(zip(backbone, features, strict=True))
    pairs += [(ours.head.score_fr, book.classifier[6])]
    pairs += [(getattr(ours.head, n), getattr(book, n)) for n in ("score_pool4", "score_pool3")]
    pairs += [(getattr(ours.head, n), getattr(book, n)) for n in ("upscore2", "upscore_pool4")]
    pairs += [(ours.head.upscore8, book.upscore8)]
    with torch.no_grad():
        for source, target in pairs:
            target.weight.copy_(source.weight)
            if getattr(target, "bias", None) is not None:
                target.bias.copy_(source.bias)
    return book


@dataclass(frozen=True)
class Config:
    label: str
    model: str  # "textbook" or a registered fcnseg name
    size: tuple[int, int]
    base: str  # the label this row's speed-up is measured against
    train: bool = False
    geometry: str | None = None
    channels_last: bool = False
    inference_mode: bool = False
    bf16: bool = False
    compile: bool = False
    freezing: bool = False  # inductor folds weights and fuses conv + ReLU (oneDNN post-ops)
    threads: int | None = None
    checkpointing: bool = False  # activation checkpointing in the backbone (training)
    fold_bn: bool = False  # batch norms folded into their convolutions (inference)


def _configs(size: int, full: bool, compile_: bool) -> list[Config]:
    hw, book, tbook = (size, size), "textbook FCN-8s fp32", "textbook FCN-8s fp32 train"
    fast = {"channels_last": True, "inference_mode": True}
    ours = "fcn8s_vgg16"
    rows = [
        Config(book, "textbook", hw, book),
        Config("FCN-8s fp32 (no_grad)", ours, hw, book),
        Config("FCN-8s fp32 inference_mode", ours, hw, book, inference_mode=True),
        Config("FCN-8s fp32 + channels_last", ours, hw, book, **fast),
        Config("FCN-8s bf16 + channels_last", ours, hw, book, bf16=True, **fast),
        Config("FCN-8s aligned fp32 + ch_last", ours, hw, book, geometry="aligned", **fast),
        Config(
            "FCN-8s aligned bf16 + ch_last", ours, hw, book, geometry="aligned", bf16=True, **fast
        ),
    ]
    if compile_:
        rows.append(replace(rows[3], label="FCN-8s fp32 + ch_last compiled", compile=True))
        rows.append(replace(rows[4], label="FCN-8s bf16 + ch_last compiled", compile=True))
        rows.append(
            replace(
                rows[3], label="FCN-8s fp32 ch_last compiled frozen", compile=True, freezing=True
            )
        )
        label = "FCN-8s aligned compiled frozen"
        rows.append(replace(rows[5], label=label, compile=True, freezing=True))
    if full:
        rows.append(replace(rows[3], label="FCN-8s fp32 + ch_last 1 thread", threads=1))
        rows.append(replace(rows[4], label="FCN-8s bf16 + ch_last 1 thread", threads=1))
        for variant in ("32s", "16s"):
            name = f"fcn{variant}_vgg16"
            rows.append(Config(f"FCN-{variant} fp32 + ch_last", name, hw, book, **fast))
            rows.append(Config(f"FCN-{variant} bf16 + ch_last", name, hw, book, bf16=True, **fast))
    lite, lite_name, lite_hw = "EffNet-Lite0 FCN-8s fp32", "fcn8s_efficientnet_lite0", (360, 480)
    rows += [
        Config(lite, lite_name, lite_hw, lite),
        Config("EffNet-Lite0 fp32 + ch_last", lite_name, lite_hw, lite, **fast),
        Config("EffNet-Lite0 bf16 + ch_last", lite_name, lite_hw, lite, bf16=True, **fast),
        Config("EffNet-Lite0 fp32 ch_last fold BN", lite_name, lite_hw, lite, fold_bn=True, **fast),
        Config(tbook, "textbook", hw, tbook, train=True),
        Config("FCN-8s fp32 train", ours, hw, tbook, train=True),
        Config("FCN-8s bf16 train", ours, hw, tbook, train=True, bf16=True),
        Config("FCN-8s aligned fp32 train", ours, hw, tbook, train=True, geometry="aligned"),
        Config(
            "FCN-8s aligned bf16 train", ours, hw, tbook, train=True, bf16=True, geometry="aligned"
        ),
        Config("FCN-8s fp32 train checkpointed", ours, hw, tbook, train=True, checkpointing=True),
        Config(
            "FCN-8s aligned train checkpointed",
            ours,
            hw,
            tbook,
            train=True,
            geometry="aligned",
            checkpointing=True,
        ),
    ]
    if full:
        rows.append(
            Config("FCN-8s fp32 ch_last train", ours, hw, tbook, train=True, channels_last=True)
        )
        for variant in ("32s", "16s"):
            rows.append(
                Config(
                    f"FCN-{variant} bf16 train",
                    f"fcn{variant}_vgg16",
                    hw,
                    tbook,
                    train=True,
                    bf16=True,
                )
            )
        lite_train = "EffNet-Lite0 fp32 train"
        rows.append(Config(lite_train, lite_name, lite_hw, lite_train, train=True))
        rows.append(
            Config("EffNet-Lite0 bf16 train", lite_name, lite_hw, lite_train, train=True, bf16=True)
        )
        rows.append(
            Config(
                "EffNet-Lite0 train checkpointed",
                lite_name,
                lite_hw,
                lite_train,
                train=True,
                checkpointing=True,
            )
        )
    if compile_:
        label = "EffNet-Lite0 compiled frozen"
        rows.append(Config(label, lite_name, lite_hw, lite, compile=True, freezing=True, **fast))
    return rows


def _selected(rows: list[Config], only: list[str] | None) -> list[Config]:
    """The rows whose label holds one of ``only`` (all rows without it), and their bases."""
    if not only:
        return rows
    chosen = {row.label for row in rows if any(text in row.label for text in only)}
    chosen |= {row.base for row in rows if row.label in chosen}
    return [row for row in rows if row.label in chosen]


def _build(config: Config) -> nn.Module:
    model = _textbook() if config.model == "textbook" else _ours(config.model, config.geometry)
    model.train(config.train)
    set_activation_checkpointing(model, config.checkpointing)
    if config.fold_bn:
        fold_batch_norm(model)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _step(config: Config, model: nn.Module, image: torch.Tensor, target: torch.Tensor):
    """One inference (returns the scores) or one SGD training step (returns the loss)."""
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16)
    if not config.train:
        grad = torch.inference_mode() if config.inference_mode else torch.no_grad()
        with grad, bf16:
            return model(image)
    optimizer = model.optimizer  # set by _measure; SGD as the reference trains
    optimizer.zero_grad(set_to_none=True)
    with bf16:
        loss = F.cross_entropy(model(image), target, ignore_index=255)
    loss.backward()
    optimizer.step()
    return loss


def _counted_step(config: Config, model: nn.Module, image, target) -> float:
    """Run one step (the warm-up) and return its FLOPs, counted as it runs.

    A training step counts as three forward passes (the backward pass computes two
    products per forward one): torch 2.13's FlopCounterMode counts a grouped
    convolution's backward as if it were dense, which inflates depthwise nets ~60x.
    """
    counter = FlopCounterMode(display=False)
    if config.train:
        with counter, torch.no_grad():
            model(image)
        _step(config, model, image, target)
        return 3 * counter.get_total_flops()
    with counter:
        _step(config, model, image, target)
    return counter.get_total_flops()


def _input(config: Config) -> torch.Tensor:
    torch.manual_seed(1)
    image = torch.randn(1, 3, *config.size) * 60  # about the spread of mean-subtracted pixels
    if config.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return image


def _measure(config: Config, repeats: int, queue) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    model, image = _build(config), _input(config)
    target = torch.randint(0, NUM_CLASSES, (1, *config.size))
    model.optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=1e-10, momentum=0.99
    )
    flops = _counted_step(config, model, image, target)  # also warms oneDNN and the allocator
    note, compile_s = "", None
    if config.compile:
        start = time.perf_counter()
        try:
            torch._inductor.config.freezing = config.freezing
            model = torch.compile(model)
            model.optimizer = model._orig_mod.optimizer
            _step(config, model, image, target)
        except Exception as error:  # noqa: BLE001 - the benchmark reports and goes on
            queue.put((config, None, flops, 0.0, f"compile failed: {type(error).__name__}"))
            return
        compile_s = time.perf_counter() - start
        note = f"compile {compile_s:.0f} s"
    times = []
    while len(times) < repeats or sum(times) < MIN_SECONDS:  # short steps: more samples
        start = time.perf_counter()
        _step(config, model, image, target)
        times.append(time.perf_counter() - start)
    peak_mib = peak_rss_mib()
    queue.put((config, statistics.median(times), flops, peak_mib, note))


def _compare(size: int, queue) -> None:
    """Max |textbook - fcnseg| in fp32, and bf16's argmax agreement with fp32 (ours)."""
    config = Config("compare", "fcn8s_vgg16", (size, size), "")
    ours, book, image = _build(config), _build(replace(config, model="textbook")), _input(config)
    with torch.inference_mode():
        reference = ours(image)
        diff = (book(image) - reference).abs().max().item()
        scale = reference.abs().max().item()
        del book
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ours(image.contiguous(memory_format=torch.channels_last)).float()
        agree = (low.argmax(1) == reference.argmax(1)).float().mean().item()
        bf16_diff = (low - reference).abs().max().item()
    queue.put((diff, scale, agree, bf16_diff))


def _matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> float:
    """GFLOP/s of the fastest large n x n matrix product: what this CPU's GEMM reaches."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9  # a peak: the least disturbed of the repeats


def _peaks(n: int, repeats: int, queue) -> None:
    queue.put((_matmul_peak(torch.float32, n, repeats), _matmul_peak(torch.bfloat16, n, repeats)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500, help="VGG16 input side (500)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row")
    parser.add_argument("--train-repeats", type=int, default=2, help="timed training steps")
    parser.add_argument("--full", action="store_true", help="all rows (FCN-32s/16s, 1 thread)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--only", nargs="+", help="rows whose label holds one of these words")
    args = parser.parse_args()
    fp32_peak, bf16_peak = in_fresh_process(_peaks, 4096, 10)
    diff, scale, agree, bf16_diff = in_fresh_process(_compare, args.size)
    seconds: dict[str, float] = {}
    threads = torch.get_num_threads()
    print(f"{threads} threads; matmul peak fp32 {fp32_peak:.0f}, bf16 {bf16_peak:.0f} GFLOP/s")
    print(
        f"textbook vs fcnseg FCN-8s fp32 at {args.size}: max |diff| {diff:.2e} "
        f"(scores up to {scale:.2e})"
    )
    print(f"bf16 vs fp32 FCN-8s: argmax agreement {100 * agree:.2f}%, max |diff| {bf16_diff:.2e}")
    header = (
        f"{'configuration':34} {'input':>8} {'time s':>7} {'img/s':>6} {'GFLOP':>6} "
        f"{'GFLOP/s':>7} {'%fp32pk':>7} {'%bf16pk':>7} {'x base':>6} {'RSS MiB':>7}  note"
    )
    print(header)
    for row in _selected(_configs(args.size, args.full, args.compile), args.only):
        repeats = args.train_repeats if row.train else args.repeats
        config, time_s, flops, peak_mib, note = in_fresh_process(_measure, row, repeats)
        seconds[config.label] = time_s
        size = "x".join(map(str, config.size))
        if time_s is None:
            print(f"{config.label:34} {size:>8} {'-':>7}  {note}")
            continue
        rate = flops / time_s / 1e9
        base = seconds.get(config.base)
        ratio = f"{base / time_s:6.2f}" if base else f"{'-':>6}"
        print(
            f"{config.label:34} {size:>8} {time_s:7.2f} {1 / time_s:6.2f} {flops / 1e9:6.0f} "
            f"{rate:7.0f} {100 * rate / fp32_peak:6.0f}% {100 * rate / bf16_peak:6.0f}% "
            f"{ratio} {peak_mib:7.0f}  {note}"
        )


if __name__ == "__main__":
    main()
