"""Tiny datasets written in the publishers' exact file formats, and a local HTTP server.

Every fixture writes a few small files (12 x 16 pixels) with the same writers the formats
use: palette PNGs through PIL mode 'P', MATLAB v5 files through scipy.io.savemat (a dict
becomes a MATLAB struct, as SBD's GTcls), 16-bit PNGs for depth.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcnseg.data.palettes import flat_palette, voc_palette

H, W = 12, 16


def rgb(seed: int, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def labels(seed: int, num_classes: int, height: int = H, width: int = W) -> np.ndarray:
    return (
        np.random.default_rng(seed + 1000)
        .integers(0, num_classes, (height, width))
        .astype(np.uint8)
    )


def save_rgb(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def save_palette_png(path: Path, label: np.ndarray, palette=None) -> None:
    """A VOC-style label: mode 'P', indices are the classes, the VOC palette attached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(flat_palette(palette or voc_palette(21)))
    image.save(path)


def save_gray_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def save_mat(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, content)


# ---------------------------------------------------------------------------------------------
# Dataset layouts


def make_voc(root: Path, year: str = "2012", splits=None) -> Path:
    """VOCdevkit/VOC<year> with JPEGImages, SegmentationClass (palette PNGs with a 255 border)."""
    splits = splits or {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    base = root / "VOCdevkit" / f"VOC{year}"
    if year == "2011":
        base = root / "TrainVal" / "VOCdevkit" / "VOC2011"  # as the 2011 tar nests it
    for split, ids in splits.items():
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids):
            save_rgb(base / "JPEGImages" / f"{i}.jpg", rgb(n), quality=95)
            label = labels(n, 21)
            label[0, :] = 255  # the void border
            save_palette_png(base / "SegmentationClass" / f"{i}.png", label)
    return root


def make_sbd(root: Path, train=("2008_000002", "2008_000003"), val=("2008_000004",)) -> Path:
    base = root / "benchmark_RELEASE" / "dataset"
    (base / "img").mkdir(parents=True, exist_ok=True)
    for split, ids in (("train", train), ("val", val)):
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids):
            save_rgb(base / "img" / f"{i}.jpg", rgb(n))
            segmentation = labels(n, 21)
            boundaries = np.empty((20, 1), dtype=object)
            boundaries[:] = [[np.zeros((0, 0))]] * 20
            save_mat(
                base / "cls" / f"{i}.mat",
                {
                    "GTcls": {
                        "Boundaries": boundaries,
                        "Segmentation": segmentation,
                        "CategoriesPresent": np.unique(segmentation[segmentation > 0]),
                    }
                },
            )
    return root


def make_camvid(root: Path) -> Path:
    """SegNet layout with list files of absolute paths from the publisher's machine."""
    base = root / "CamVid"
    for split, names in (("train", ["0001TP_006690", "0001TP_006720"]), ("val", ["0016E5_07959"])):
        lines = []
        for n, name in enumerate(names):
            save_rgb(base / split / f"{name}.png", rgb(n))
            label = labels(n, 12)  # 11 = Unlabelled
            save_gray_png(base / f"{split}annot" / f"{name}.png", label)
            lines.append(
                f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png"
            )
        (base / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


SIFT = "spatial_envelope_256x256_static_8outdoorcategories"


def make_siftflow(root: Path, ids=("coast_arnat59", "street_par177", "mountain_nat1")) -> Path:
    """Two images of the reference test split and one trainval image (mountain_nat1)."""
    base = root / "SiftFlowDataset"
    for n, i in enumerate(ids):
        save_rgb(base / "Images" / SIFT / f"{i}.jpg", rgb(n))
        semantic = labels(n, 34).astype(np.float64)  # 0 void, 1..33
        geometric = labels(n, 4).astype(np.int32)  # 0..3, and -1 void
        geometric[0, 0] = -1
        save_mat(base / "SemanticLabels" / SIFT / f"{i}.mat", {"S": semantic, "names": "x"})
        save_mat(base / "GeoLabels" / SIFT / f"{i}.mat", {"S": geometric, "names": "y"})
    return base


def make_nyud(root: Path, splits=None) -> Path:
    splits = splits or {"train": ["5003", "5004"], "test": ["5001"]}
    base = root / "nyud"
    for split, ids in splits.items():
        base.mkdir(parents=True, exist_ok=True)
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for n, i in enumerate(ids):
            save_rgb(base / "data" / "images" / f"img_{i}.png", rgb(n))
            save_rgb(base / "data" / "hha" / f"img_{i}.png", rgb(n + 50))
            depth = (np.arange(H * W).reshape(H, W) * 40 + 1000).astype(np.uint16)
            (base / "data" / "depth").mkdir(parents=True, exist_ok=True)
            Image.fromarray(depth).save(base / "data" / "depth" / f"img_{i}.png")
            save_mat(base / "segmentation" / f"img_{i}.mat", {"segmentation": labels(n, 41)})
    return base


# A few raw PASCAL-Context labels as labels.txt numbers them (459 in the real file).
CONTEXT_RAW = {1: "accordion", 2: "aeroplane", 9: "bag", 25: "bedclothes", 65: "cloth",
               259: "sky", 284: "table", 366: "tvmonitor", 420: "wood", 459: "zebra"}  # fmt: skip


def make_context(root: Path, ids=("2008_000008", "2008_000015")) -> Path:
    """trainval/<id>.mat (LabelMap uint16), labels.txt, and VOC2010 for the images."""
    names = list(CONTEXT_RAW.items())
    # Fill the other indices so every 59-class name exists, as in the full labels.txt.
    from fcnseg.data.context import _ALIASES, CONTEXT_CLASSES

    present = {name for _, name in names}
    free = (k for k in range(3, 459) if k not in CONTEXT_RAW)
    for name in CONTEXT_CLASSES[1:]:
        name = _ALIASES.get(name, name)
        if name not in present:
            names.append((next(free), name))
    (root / "trainval").mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(names)))
    for n, i in enumerate(ids):
        raw = np.array(sorted(CONTEXT_RAW), dtype=np.uint16)
        label_map = raw[labels(n, len(raw)).astype(int)]
        label_map[0, 0] = 0  # unlabelled
        save_mat(root / "trainval" / f"{i}.mat", {"LabelMap": label_map})
    make_voc(root, "2010", {"train": list(ids[:1]), "val": list(ids[1:])})
    main = root / "VOCdevkit" / "VOC2010" / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / "train.txt").write_text(ids[0] + "\n")
    (main / "val.txt").write_text("\n".join(ids[1:]) + "\n")
    return root


def make_cityscapes(root: Path) -> Path:
    for split, city, frames in (
        ("train", "aachen", ["000000_000019", "000001_000019"]),
        ("val", "lindau", ["000000_000019"]),
    ):
        for n, frame in enumerate(frames):
            name = f"{city}_{frame}"
            save_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", rgb(n))
            save_gray_png(
                root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels(n, 34)
            )
    return root


def make_folder(root: Path, colour_masks: bool = False) -> Path:
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    lines = ["# my classes", "background 0 0 0", "road #ff0000", "tree 0 255 0  # green"]
    if colour_masks:
        lines.append("ignore 255 255 255")
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    for n, stem in enumerate(["a", "b"]):
        save_rgb(root / "images" / f"{stem}.jpg", rgb(n))
        label = labels(n, 3)
        if colour_masks:
            mask = np.array(colors, dtype=np.uint8)[label]
            mask[0, 0] = 255  # ignore colour
            save_rgb(root / "masks" / f"{stem}.png", mask)
        else:
            save_gray_png(root / "masks" / f"{stem}.png", label)
    return root


# ---------------------------------------------------------------------------------------------
# A local HTTP server with Range support


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        data = self.server.files.get(self.path)
        range_header = self.headers.get("Range")
        self.server.requests.append((self.path, range_header))
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and self.server.honor_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:
            cut, self.server.cut_after = self.server.cut_after, None  # only the first response
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


class _Server(ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[tuple[str, str | None]]
    honor_range: bool = True
    cut_after: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def http_server():
    """A server on 127.0.0.1 serving ``server.files`` (path -> bytes), with Range support."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.files, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def make():
    """The layout writers: ``make.voc(tmp_path)``, ``make.sbd(...)``, ..."""
    return SimpleNamespace(
        voc=make_voc,
        sbd=make_sbd,
        camvid=make_camvid,
        siftflow=make_siftflow,
        nyud=make_nyud,
        context=make_context,
        cityscapes=make_cityscapes,
        folder=make_folder,
        rgb=rgb,
        labels=labels,
        save_rgb=save_rgb,
        save_palette_png=save_palette_png,
        save_gray_png=save_gray_png,
        save_mat=save_mat,
    )
