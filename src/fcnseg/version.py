"""fcnseg's version, in the lowest layer: files fcnseg writes record it (``fcnseg.__version__``)."""

__version__ = "0.2.0"
