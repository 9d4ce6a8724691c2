"""SIFT Flow (Liu et al.; the 2,688-image LabelMe subset as Tighe and Lazebnik publish it).

Layout of ``SiftFlowDataset.zip``: ``Images/spatial_envelope_256x256_static_8outdoorcategories/
<id>.jpg`` and, in the same sub-folder of ``SemanticLabels/`` and ``GeoLabels/``, ``<id>.mat``
files whose variable ``S`` is the label map. Semantic labels are 0 (void) and 1-33, geometric
labels -1 (void) and 1-3 (sky, horizontal, vertical). As the reference does, geometric -1
becomes 0, then both sets lose 1, so void is 255: 33 semantic + 3 geometric classes.

Splits: the reference's ``trainval.txt`` / ``test.txt`` in the root when present; otherwise
its 200 test ids (built in below) and every other image as trainval (2,488).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .base import (
    DatasetError,
    LabelMap,
    Sample,
    SegmentationDataset,
    check_files,
    check_same_size,
    find_dir,
    image_to_tensor,
    label_to_tensor,
    read_image,
    read_mat,
    read_split_file,
    register_dataset,
)
from .download import Resource, fetch_and_extract
from .palettes import voc_palette

__all__ = [
    "SIFTFLOW_CLASSES",
    "SIFTFLOW_GEOMETRIC_CLASSES",
    "SIFTFLOW_RESOURCE",
    "SIFTFLOW_TEST_IDS",
    "SiftFlow",
]

SIFTFLOW_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow",
    "crosswalk", "desert", "door", "fence", "field", "grass", "moon", "mountain", "person",
    "plant", "pole", "river", "road", "rock", "sand", "sea", "sidewalk", "sign", "sky",
    "staircase", "streetlight", "sun", "tree", "window",
)  # fmt: skip
SIFTFLOW_GEOMETRIC_CLASSES = ("sky", "horizontal", "vertical")

SIFTFLOW_RESOURCE = Resource(
    url="http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip",
    filename="SiftFlowDataset.zip",
)

# The reference's test split (fcn.berkeleyvision.org data/sift-flow/test.txt), 200 images.
SIFTFLOW_TEST_IDS = tuple(
    (
        "coast_natu975 insidecity_art947 insidecity_urb781 highway_bost374 coast_n203085 "
        "insidecity_a223049 mountain_nat116 street_art861 mountain_land188 street_par177 "
        "opencountry_natu524 forest_natu29 highway_gre37 street_bost77 insidecity_art1125 "
        "street_urb521 highway_bost178 street_art760 street_urb885 insidecity_art829 coast_natu804 "
        "mountain_sharp44 coast_natu649 opencountry_land691 insidecity_hous35 tallbuilding_art1719 "
        "mountain_n736026 mountain_moun41 insidecity_urban992 opencountry_land295 "
        "tallbuilding_art527 highway_art238 forest_for114 coast_land296 tallbuilding_sky7 "
        "mountain_n44009 tallbuilding_art1316 forest_nat717 highway_bost164 street_par29 "
        "forest_natc52 tallbuilding_art1004 coast_sun14 opencountry_land206 opencountry_land364 "
        "mountain_n219015 highway_a836030 forest_nat324 opencountry_land493 insidecity_art1598 "
        "street_street27 insidecity_a48009 coast_cdmc889 street_gre295 tallbuilding_a538076 "
        "street_boston378 highway_urb759 street_par151 tallbuilding_urban1003 tallbuilding_urban16 "
        "highway_bost151 opencountry_nat965 highway_gre661 forest_for42 opencountry_n18002 "
        "insidecity_art646 highway_gre55 coast_n295051 forest_bost103 highway_n480036 "
        "mountain_land4 forest_nat130 coast_nat643 insidecity_urb250 street_gre11 street_boston271 "
        "opencountry_n490003 mountain_nat762 street_par86 coast_arnat59 mountain_land787 "
        "highway_gre472 opencountry_tell67 mountain_sharp66 opencountry_land534 insidecity_gre290 "
        "highway_bost307 opencountry_n213059 forest_nat220 forest_cdmc348 tallbuilding_art900 "
        "insidecity_art569 street_urb200 coast_natu468 coast_n672069 insidecity_hous109 "
        "forest_land862 opencountry_natu65 tallbuilding_a805096 opencountry_n291058 forest_natu439 "
        "coast_nat799 tallbuilding_urban991 tallbuilding_sky17 opencountry_land638 "
        "opencountry_natu563 tallbuilding_urb733 forest_cdmc451 mountain_n371066 mountain_n213081 "
        "mountain_nat57 tallbuilding_a463068 forest_natu848 tallbuilding_art306 insidecity_boston92 "
        "insidecity_urb584 tallbuilding_urban1126 coast_n286045 street_gre179 coast_nat1091 "
        "opencountry_nat615 coast_nat901 forest_cdmc291 mountain_natu568 mountain_n18070 "
        "street_bost136 tallbuilding_art425 coast_bea3 tallbuilding_art1616 insidecity_art690 "
        "highway_gre492 highway_bost320 forest_nat400 highway_par23 tallbuilding_a212033 "
        "forest_natu994 tallbuilding_archi296 highway_gre413 tallbuilding_a279033 "
        "insidecity_art1277 coast_cdmc948 forest_for15 street_par68 mountain_natu786 "
        "opencountry_open61 opencountry_nat423 mountain_land143 tallbuilding_a487066 "
        "tallbuilding_art1751 insidecity_hous79 street_par118 highway_bost293 mountain_n213021 "
        "opencountry_nat802 coast_n384099 opencountry_natu998 mountain_n344042 coast_nat1265 "
        "forest_text44 forest_for84 insidecity_a807066 opencountry_nat1117 coast_sun42 "
        "insidecity_par180 opencountry_land923 highway_art580 street_art1328 coast_cdmc838 "
        "opencountry_land660 opencountry_cdmc354 coast_natu825 opencountry_natu38 mountain_nat30 "
        "coast_n199066 forest_text124 forest_land222 tallbuilding_city56 tallbuilding_city22 "
        "opencountry_fie36 mountain_ski24 coast_cdmc997 insidecity_boston232 opencountry_land575 "
        "opencountry_land797 insidecity_urb362 forest_nat1033 mountain_nat891 street_hexp3 "
        "tallbuilding_art1474 tallbuilding_urban73 opencountry_natu852 mountain_nat1008 "
        "coast_nat294 mountain_sharp20 opencountry_fie14 mountain_land275 forest_land760 "
        "coast_land374 mountain_nat426 highway_gre141 "
    ).split()
)

_SUBFOLDER = "spatial_envelope_256x256_static_8outdoorcategories"
_FIX = "extract SiftFlowDataset.zip there or call SiftFlow.download(root)"
LABEL_SETS = ("semantic", "geometric")


@register_dataset("siftflow")
class SiftFlow(SegmentationDataset):
    """SIFT Flow with both label sets.

    ``labels`` picks which: the default ``("semantic", "geometric")`` returns the label as a
    dict ``{"semantic": HxW, "geometric": HxW}`` (the two heads of the reference net); a single
    name returns that label as a tensor. ``classes`` are the 33 semantic classes,
    ``label_classes`` gives each set's names. ``split``: trainval (alias train) or test.
    """

    classes = SIFTFLOW_CLASSES
    palette = voc_palette(len(SIFTFLOW_CLASSES))
    label_classes = {"semantic": SIFTFLOW_CLASSES, "geometric": SIFTFLOW_GEOMETRIC_CLASSES}
    label_palettes = {"semantic": palette, "geometric": voc_palette(3)}
    # 0 void -> 255, k -> k - 1; geometric -1 -> 0 first (the reference's shift).
    label_maps = {
        "semantic": LabelMap(
            {0: 255, **{k: k - 1 for k in range(1, 34)}}, name="SIFT Flow semantic"
        ),
        "geometric": LabelMap({-1: 255, 0: 255, 1: 0, 2: 1, 3: 2}, name="SIFT Flow geometric"),
    }

    def __init__(
        self,
        root: Path | str,
        split: str = "trainval",
        transforms: Callable | None = None,
        *,
        labels: str | Sequence[str] = LABEL_SETS,
    ) -> None:
        self.root = find_dir(root, ["", "SiftFlowDataset"], "Images", "SIFT Flow", _FIX)
        self.split = split
        self.labels = (labels,) if isinstance(labels, str) else tuple(labels)
        unknown = set(self.labels) - set(LABEL_SETS)
        if unknown or not self.labels:
            raise ValueError(f"labels must be taken from {LABEL_SETS}, got {labels!r}")
        ids, listed_in = self._split_ids(split)
        folder = lambda name: self.root / name / _SUBFOLDER  # noqa: E731
        samples = [
            Sample(
                i,
                folder("Images") / f"{i}.jpg",
                extra={
                    "semantic": folder("SemanticLabels") / f"{i}.mat",
                    "geometric": folder("GeoLabels") / f"{i}.mat",
                },
            )
            for i in ids
        ]
        check_files(samples, listed_in)
        super().__init__(samples, transforms)

    def _split_ids(self, split: str) -> tuple[list[str], Path | str]:
        name = {"train": "trainval"}.get(split, split)
        if name not in ("trainval", "test"):
            raise DatasetError(f"SIFT Flow has splits trainval and test, not {split!r}")
        listed = self.root / f"{name}.txt"
        if listed.is_file():
            return read_split_file(listed, "list one image id per line"), listed
        if name == "test":
            return list(SIFTFLOW_TEST_IDS), "the built-in test split"
        images = self.root / "Images" / _SUBFOLDER
        if not images.is_dir():
            raise DatasetError(f"SIFT Flow images folder {images} is missing: {_FIX}")
        test = set(SIFTFLOW_TEST_IDS)
        ids = sorted(p.stem for p in images.glob("*.jpg") if p.stem not in test)
        return ids, images

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        sample = self.samples[index]
        labels = {}
        for name in self.labels:
            path = sample.extra[name]
            raw = read_mat(path, "S")
            labels[name] = label_to_tensor(self.label_maps[name](raw, path))
        image = read_image(sample.image, match=tuple(labels[self.labels[0]].shape))
        for name in self.labels:
            check_same_size(image, labels[name].numpy(), sample.image, sample.extra[name])
        label = labels[self.labels[0]] if len(self.labels) == 1 else labels
        return image_to_tensor(image), label

    @staticmethod
    def download(root: Path | str, *, progress=None) -> Path:
        """Fetch and extract SiftFlowDataset.zip into ``root``; returns ``root``."""
        return fetch_and_extract(SIFTFLOW_RESOURCE, root, progress=progress)
