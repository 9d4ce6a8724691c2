"""Weight importers: Caffe .caffemodel / .prototxt files read without Caffe."""

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
from .prototxt import PrototxtError, parse_prototxt, read_prototxt, repeated
from .protowire import CaffeFormatError

__all__ = [
    "CaffeFormatError",
    "CaffeLayer",
    "CaffeNet",
    "PrototxtError",
    "StateDictReport",
    "caffe_to_state_dict",
    "convert_caffe",
    "inspect",
    "parse_caffemodel",
    "parse_prototxt",
    "read_caffemodel",
    "read_prototxt",
    "repeated",
]
