"""The ``snooze images`` verbs on the image repository (the bootstrap's ``/images``):
``images [list]``, ``images upload FILE [--name N] [--format raw]``, ``images delete ID``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from snooze.cli.errors import reports_errors
from snooze.cli.output import HelpFormatter, table
from snooze.cli.target import add_target_options, client

__all__ = ["format_images", "register", "size"]


def size(n: Any) -> str:
    """Bytes as ``1.5 GiB``, ``20.0 MiB``, ``512 B``; ``-`` if not a number."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:g} B"


def format_images(images: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [("ID", "FORMAT", "VIRTUAL SIZE", "FILE SIZE", "USED BY", "CHECKSUM")]
    for img in images:
        used = img.get("usedBy")
        shown = "?" if used is None else (", ".join(used) if used else "-")
        rows.append((str(img.get("id")), str(img.get("format")), size(img.get("capacity")), size(img.get("size")),
                     shown, str(img.get("checksum", ""))[:19]))
    return table(rows)


def cmd_list(args: argparse.Namespace) -> int:
    with client(args) as api:
        images = api.list_images()
    print(json.dumps({"images": images}, indent=2) if args.json else format_images(images))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    with client(args) as api:
        img = api.upload_image(args.file, args.name, image_format=args.format)
    if args.json:
        print(json.dumps(img, indent=2))
    else:
        print(f"{img['id']}: {img['format']}, {size(img['capacity'])} virtual, {size(img['size'])}, {img['checksum']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with client(args) as api:
        api.delete_image(args.id)
    print(f"{args.id}: deleted")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``images`` (list, upload, delete) to the ``snooze`` command's subparsers."""
    images = subparsers.add_parser("images", help="list, upload and delete images of the repository",
                                   formatter_class=HelpFormatter)
    add_target_options(images, top_level=False)
    images.add_argument("--json", action="store_true", help="print the answer as JSON")
    images.set_defaults(func=reports_errors(cmd_list))
    verbs = images.add_subparsers(dest="images_command")
    ls = verbs.add_parser("list", help="list the images (the default)")
    add_target_options(ls, top_level=False)
    ls.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
    ls.set_defaults(func=reports_errors(cmd_list))
    up = verbs.add_parser("upload", help="upload a qcow2 (or raw) disk image", formatter_class=HelpFormatter)
    add_target_options(up, top_level=False)
    up.add_argument("file", help="the image file")
    up.add_argument("--name", help="the image's id in the repository (default: the file's name)")
    up.add_argument("--format", choices=("qcow2", "raw"),
                    help="qcow2 is checked by its header; a raw disk must be named so (any bytes are a raw disk)")
    up.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
    up.set_defaults(func=reports_errors(cmd_upload))
    rm = verbs.add_parser("delete", help="delete an image (refused while a VM uses it)")
    add_target_options(rm, top_level=False)
    rm.add_argument("id", help="the image's id")
    rm.set_defaults(func=reports_errors(cmd_delete))
