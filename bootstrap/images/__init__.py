"""The image repository, part of the bootstrap (same process, same port): ``/images``.

``store``: the image files in ``[images] directory`` (optionally a libvirt dir storage pool);
``inspect``: what an uploaded file is, asked of ``qemu-img`` safely; ``api``: the HTTP verbs.
See docs/images.md.
"""

from .api import ImagesApi

__all__ = ["ImagesApi"]
