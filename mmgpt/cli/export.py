"""``mmgpt-export CKPT OUT [--include-backbones]``: write a trained checkpoint as a self-contained folder
(:mod:`mmgpt.exported`), which ``mmgpt.load(OUT)`` opens."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from mmgpt.cli.common import user_errors
from mmgpt.stamp import version_line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmgpt-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a training checkpoint (e.g. RUN/checkpoints/best-*.ckpt)")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--include-backbones", action="store_true",
                   help="copy pretrained backbones' files in (safetensors and configs) instead of referencing them "
                        "by name_or_path + sha256")
    p.add_argument("--plugins", nargs="*", default=[], help="your modules registering parts the model uses")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in OUT (a folder with its mmgpt.json)")
    p.add_argument("--version", action="version", version=version_line("mmgpt-export"))
    return p


@user_errors
def main(argv: Sequence[str] | None = None) -> None:
    from mmgpt.exported import export

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] %(message)s")
    out = export(args.checkpoint, args.out, include_backbones=args.include_backbones, plugins=args.plugins,
                 overwrite=args.overwrite)
    print(f"exported to {out} (load it with mmgpt.load({str(out)!r}); model card: {out / 'README.md'})")


if __name__ == "__main__":
    main()
