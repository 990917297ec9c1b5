"""``dyhead-serve zoo list``: the named models and whether their weights are cached."""

from __future__ import annotations

import argparse

__all__ = ["add_zoo_parser"]


def add_zoo_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``zoo`` subcommand and its ``list``."""
    p = subparsers.add_parser(
        "zoo", help="list the named models", description="Named models usable with --model."
    )
    zoo_commands = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    listing = zoo_commands.add_parser(
        "list", help="list the named models and whether their weights are cached"
    )
    listing.set_defaults(func=run_zoo_list)


def run_zoo_list(args: argparse.Namespace) -> int:
    """Print the zoo table and the cache folder."""
    from dyhead_serve import zoo
    from dyhead_serve.checkpoint import cache_dir, cached_weights_path

    width = max(len(name) for name in zoo.ZOO)
    print(f"{'name':{width}s} {'COCO AP':>7s}  {'cached':6s}  description / weights URL")
    for entry in zoo.ZOO.values():
        cached = entry.embedded is not None or cached_weights_path(entry.url).is_file()
        ap = f"{entry.coco_ap:.1f}" if entry.coco_ap is not None else "-"
        print(f"{entry.name:{width}s} {ap:>7s}  {'yes' if cached else 'no':6s}  {entry.description}")
        print(f"{'':{width + 18}s}{entry.url or 'shipped in the package'}")
    print(f"\ncache: {cache_dir()} (set DYHEAD_SERVE_CACHE to move it)")
    return 0
