"""Pictures that read without the report: titled panels, legends, class 0 painted where it
is a class, absent classes marked in the confusion matrix."""

import numpy as np
import pytest
from PIL import Image

from fcnseg import viz
from fcnseg.data import SYNTHETIC_CLASSES, SyntheticShapes, voc_palette
from fcnseg.data.camvid import CAMVID_CLASSES
from fcnseg.data.palettes import CAMVID_PALETTE, VOC_VOID_COLOR
from fcnseg.data.voc import VOC_CLASSES


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _labels(height, width, values, seed=1):
    return np.random.default_rng(seed).choice(values, (height, width))


def _legend_names(figure):
    (legend,) = figure.legends
    return [text.get_text() for text in legend.get_texts()]


def _pixel_box(figure, artist):
    """(left, bottom, right, top) of ``artist`` in the figure's pixels, from the bottom."""
    box = artist.get_window_extent(figure.canvas.get_renderer())
    return box.x0, box.y0, box.x1, box.y1


@pytest.mark.parametrize(
    ("classes", "painted"),
    [
        (CAMVID_CLASSES, True),  # 0 is Sky
        (("road", "car"), True),
        (VOC_CLASSES, False),  # 0 is background
        (("Background", "cat"), False),
        (("_background_", "cat"), False),
        (("VOID", "cat"), False),
        (("Unlabelled", "cat"), False),
        (("unlabeled", "cat"), False),
        (None, False),  # no names: the VOC convention, as before
    ],
)
def test_class_zero_is_painted_unless_named_background(classes, painted):
    assert viz.paints_class_zero(classes) is painted


def test_overlay_paints_camvid_sky_but_not_voc_background():
    image = _image(6, 8)
    labels = np.zeros((6, 8), dtype=np.int64)
    labels[:, 4:] = 2
    labels[0, 0] = 255
    camvid = viz.overlay(image, labels, CAMVID_PALETTE, classes=CAMVID_CLASSES)
    sky = labels == 0
    expected_sky = (0.5 * image[sky] + 0.5 * np.array(CAMVID_PALETTE[0])).astype(np.uint8)
    assert np.array_equal(camvid[sky], expected_sky)  # Sky blended with its colour
    voc = viz.overlay(image, labels, voc_palette(21), classes=VOC_CLASSES)
    assert np.array_equal(voc[sky], image[sky])  # background left as it is
    assert not np.array_equal(voc[labels == 2], image[labels == 2])
    assert camvid[0, 0].tolist() == image[0, 0].tolist()  # ignored pixels never painted
    # callers that give no names keep the old picture
    assert np.array_equal(viz.overlay(image, labels, voc_palette(21)), voc)


def test_legend_lists_every_class_when_few_else_the_classes_shown():
    few = viz.legend_entries([np.array([[1, 1]])], SYNTHETIC_CLASSES, voc_palette(7))
    assert [e.name for e in few] == list(SYNTHETIC_CLASSES)
    assert few[1].color == tuple(voc_palette(7)[1])
    maps = [np.array([[3, 0], [255, 3]]), np.array([[8, 8], [8, 8]])]
    many = viz.legend_entries(maps, CAMVID_CLASSES, CAMVID_PALETTE)
    assert [e.name for e in many] == ["Sky", "Road", "Car", "ignored"]
    assert many[-1].color == VOC_VOID_COLOR and many[2].color == CAMVID_PALETTE[8]
    hidden = viz.legend_entries(maps, CAMVID_CLASSES, CAMVID_PALETTE, hidden=(0,), void=False)
    assert [e.name for e in hidden] == ["Road", "Car"]


def test_panel_has_column_titles_a_legend_and_its_documented_size():
    image = _image(32, 48)
    label = _labels(32, 48, [0, 3, 8, 255])
    prediction = _labels(32, 48, [0, 3, 5], seed=2)
    titles = ("image", "label", "prediction")
    figure = viz.panel_figure(
        image, [label, prediction], CAMVID_PALETTE, titles=titles, classes=CAMVID_CLASSES
    )
    assert [ax.get_title() for ax in figure.axes] == list(titles)
    # 11 classes are many: only those in the label or the prediction, and the ignored pixels
    assert _legend_names(figure) == ["Sky", "Road", "Tree", "Car", "ignored"]
    pixels = viz.figure_pixels(figure)
    # 48 x 32 tiles grow by a whole factor (4) to 192 x 128; 8 px margins and gaps
    assert viz.panel_tile_size(32, 48) == (128, 192)
    assert pixels.shape[1] == 8 + 3 * 192 + 2 * 8 + 8
    assert pixels.shape[0] > 8 + 24 + 128 + 8  # margins, title band, tiles, and the legend
    boxes = [_pixel_box(figure, ax) for ax in figure.axes]
    assert all(round(r - left) == 192 and round(t - b) == 128 for left, b, r, t in boxes)
    assert all(boxes[i][2] < boxes[i + 1][0] for i in range(2))  # side by side, apart
    legend = _pixel_box(figure, figure.legends[0])
    assert legend[0] >= 0 and legend[1] >= 0 and legend[2] <= pixels.shape[1]
    assert legend[3] < min(b for _, b, _, _ in boxes)  # below the tiles, inside the picture
    # the label tile shows the label's colours (nearest-neighbour, x4)
    left, _, _, top = boxes[1]
    row, col = pixels.shape[0] - int(top) + 2, int(left) + 2
    assert tuple(pixels[row, col]) == viz.legend_entries([label[:1, :1]], CAMVID_CLASSES, CAMVID_PALETTE)[0].color  # fmt: skip
    with pytest.raises(ValueError, match="2 titles for 3 pictures"):
        viz.panel_figure(image, [label, prediction], CAMVID_PALETTE, titles=titles[:2], classes=CAMVID_CLASSES)  # fmt: skip


def test_large_images_make_tiles_of_at_most_512_pixels():
    assert viz.panel_tile_size(360, 480) == (360, 480)
    assert viz.panel_tile_size(1024, 2048) == (256, 512)
    assert viz.panel_tile_size(100, 10) == (200, 20)


def test_overlay_figure_keeps_the_pixels_and_adds_a_legend():
    image = _image(40, 300)
    labels = _labels(40, 300, [0, 1, 3])
    figure = viz.overlay_figure(image, labels, CAMVID_PALETTE, CAMVID_CLASSES)
    assert _legend_names(figure) == ["Sky", "Building", "Road"]  # Sky is painted: listed
    pixels = viz.figure_pixels(figure)
    assert pixels.shape[1] == 300 and pixels.shape[0] > 40
    expected = viz.overlay(image, labels, CAMVID_PALETTE, classes=CAMVID_CLASSES)
    assert np.array_equal(pixels[:40], expected)
    voc = viz.overlay_figure(image, labels, voc_palette(21), VOC_CLASSES)
    assert _legend_names(voc) == ["aeroplane", "bird"]  # background is not painted: not listed
    narrow = viz.figure_pixels(viz.overlay_figure(image[:, :20], labels[:, :20], voc_palette(21), VOC_CLASSES))  # fmt: skip
    assert narrow.shape[1] == 240  # room for the legend
    assert np.array_equal(narrow[:40, :20], viz.overlay(image[:, :20], labels[:, :20], voc_palette(21)))  # fmt: skip
    assert (narrow[:40, 20:] == 255).all()  # white beside the image


def test_confusion_marks_classes_absent_from_the_labels(tmp_path):
    matrix = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])  # nothing labelled as class 1
    figure = viz.confusion_figure(matrix, ["sky", "pole", "road"])
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sky", "pole (absent)", "road"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sky", "pole", "road"]
    shown = ax.images[0].get_array()
    assert shown.mask[1].all() and not shown.mask[[0, 2]].any()  # the row drawn in grey
    assert "no labelled pixel" in ax.get_title()
    full = viz.confusion_figure(np.eye(3) + 1, ["a", "b", "c"])
    assert "(absent)" not in "".join(t.get_text() for t in full.axes[0].get_yticklabels())
    path = viz.plot_confusion(matrix, ["sky", "pole", "road"], tmp_path / "confusion.png")
    assert Image.open(path).size == (500, 400)


class _Segmenter:
    """The prediction is the label: a stand-in for a trained net."""

    classes = SYNTHETIC_CLASSES
    palette = voc_palette(7)
    ignore_index = 255

    def __init__(self, dataset):
        self.dataset = dataset

    def predict(self, image):
        (index,) = [i for i in range(len(self.dataset)) if np.array_equal(viz.raw_item(self.dataset, i)[0], image)]  # fmt: skip
        return viz.raw_item(self.dataset, index)[1]


def test_save_overlays_writes_titled_panels_and_overlays(tmp_path):
    dataset = SyntheticShapes("val", size=32, num_images=2)
    written = viz.save_overlays(_Segmenter(dataset), dataset, tmp_path, count=3)
    assert [p.name for p in written] == ["000.png", "001.png"]
    panel = Image.open(tmp_path / "000.png")
    assert panel.mode == "RGB" and panel.size[0] == 8 + 3 * 160 + 2 * 8 + 8
    image, label = viz.raw_item(dataset, 0)
    blended = np.asarray(Image.open(tmp_path / "000_overlay.png"))
    assert blended.shape[1] == 240 and blended.shape[0] > 32
    assert np.array_equal(blended[:32, :32], viz.overlay(image, label, voc_palette(7)))


def test_curves_draw_each_run_in_one_colour_in_every_panel(tmp_path):
    """Issue 30: the demo's combined curves coloured FCN-8s orange in one panel and FCN-32s
    orange in another; a run now keeps its colour in loss, lr and validation."""

    def log(scale):
        train = [{"event": "train", "iteration": i, "loss": scale / i, "lr": 1e-3} for i in (1, 2)]
        val = [{"event": "val", "iteration": 2, "mean_iu": scale / 3, "pixel_acc": scale / 2}]
        return train + val

    runs = {"FCN-32s": log(1.0), "FCN-8s": [*log(0.5)[2:], *log(0.5)[:2]]}  # val logged first
    figure = viz.curves_figure([], runs=runs)
    loss_ax, lr_ax, val_ax = figure.axes
    for index, name in enumerate(runs):
        colours = {
            line.get_color()
            for ax in (loss_ax, lr_ax, val_ax)
            for line in ax.lines
            if line.get_label().startswith(name + " ")
        }
        assert colours == {f"C{index}"}, name
    assert len(val_ax.lines) == 4 and len(loss_ax.lines) == 2
    assert viz.plot_curves([], tmp_path / "curves.png", runs=runs).is_file()


def test_ignored_pixels_and_their_swatch_take_the_declared_ignore_colour(tmp_path):
    """Issue 30: a folder whose classes.txt declares "ignore 255 0 255" draws its ignored
    pixels, and the legend's "ignored" swatch, in that colour, not VOC's void colour."""
    from torch.utils.data import Subset

    from fcnseg.data import build_dataset

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("sky 0 0 255\nroad 0 255 0\nignore 255 0 255\n")
    colours = np.zeros((16, 20, 3), np.uint8)
    colours[:, :10] = (0, 0, 255)
    colours[:, 10:] = (0, 255, 0)
    colours[:4, :4] = (255, 0, 255)  # ignored
    Image.fromarray(colours).save(root / "masks" / "a.png")
    Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(root / "images" / "a.png")
    dataset = Subset(build_dataset("folder", root=root, split=None), [0])

    class Truth:  # predicts the label, with its ignored pixels as sky
        classes, palette, ignore_index = ("sky", "road"), [(0, 0, 255), (0, 255, 0)], 255

        def predict(self, image):
            label = viz.raw_item(dataset, 0)[1].copy()
            label[label == 255] = 0
            return label

    viz.save_overlays(Truth(), dataset, tmp_path / "out", count=1)
    panel = np.asarray(Image.open(tmp_path / "out" / "000.png"))
    magenta = (panel == (255, 0, 255)).all(axis=2)
    void = (panel == VOC_VOID_COLOR).all(axis=2)
    assert magenta.sum() > 16 * 8 and not void.any()  # the label tile and the swatch
    entries = viz.legend_entries([viz.raw_item(dataset, 0)[1]], Truth.classes, Truth.palette, ignore_color=(255, 0, 255))  # fmt: skip
    assert entries[-1] == viz.LegendEntry("ignored", (255, 0, 255))
