"""Foreign weights in: Caffe files read without Caffe, torchvision/timm/package state dicts
mapped onto our backbones. fcnseg's own files are ``fcnseg.modelfile``."""

from .caffe import (
    CaffeLayer,
    CaffeNet,
    StateDictReport,
    caffe_to_state_dict,
    convert_caffe,
    inspect,
    parse_caffemodel,
    read_caffemodel,
)
from .foreign import LAYOUTS, Layout, detect_layout, load_backbone_weights, load_package_weights
from .prototxt import PrototxtError, parse_prototxt, read_prototxt, repeated
from .protowire import CaffeFormatError

__all__ = [
    "CaffeFormatError",
    "CaffeLayer",
    "CaffeNet",
    "LAYOUTS",
    "Layout",
    "PrototxtError",
    "StateDictReport",
    "caffe_to_state_dict",
    "convert_caffe",
    "detect_layout",
    "inspect",
    "load_backbone_weights",
    "load_package_weights",
    "parse_caffemodel",
    "parse_prototxt",
    "read_caffemodel",
    "read_prototxt",
    "repeated",
]
