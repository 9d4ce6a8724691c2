"""``fcnseg serve``: a trained model behind HTTP (``fcnseg[serve]``: Starlette, uvicorn).

``Service`` does the work of a request without HTTP (decode, batched model run, encode),
``create_app`` puts it behind Starlette's routes, ``server.run`` serves it with uvicorn::

    from fcnseg import Segmenter
    from fcnseg.serving import Service, create_app, server

    service = Service(Segmenter.from_pretrained("fcn8s_efficientnet_lite0.camvid"), name="camvid")
    server.run(create_app(service), server.bind("127.0.0.1", 8000))

docs/deploy.md shows the endpoints, clients and replicas.
"""

from . import server
from .app import DEFAULT_MAX_BYTES, create_app, missing_extra
from .batcher import Batcher, Closed
from .service import DEFAULT_MAX_PIXELS, Answer, Service
from .uploads import Refused

__all__ = [
    "Answer",
    "Batcher",
    "Closed",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "Refused",
    "Service",
    "create_app",
    "missing_extra",
    "server",
]
