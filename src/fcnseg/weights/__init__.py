"""Weights in and out: Caffe files read without Caffe, torchvision/timm/package state
dicts mapped onto our backbones, and fcnseg's own weights files (torch or safetensors)."""

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
from .files import WeightsFile, load_weights, read_weights, save_weights
from .foreign import LAYOUTS, Layout, detect_layout, load_backbone_weights
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
    "WeightsFile",
    "caffe_to_state_dict",
    "convert_caffe",
    "detect_layout",
    "inspect",
    "load_backbone_weights",
    "load_weights",
    "parse_caffemodel",
    "parse_prototxt",
    "read_caffemodel",
    "read_prototxt",
    "read_weights",
    "repeated",
    "save_weights",
]
