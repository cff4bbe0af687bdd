"""``mmgpt-data``: tools for manifest folders (``data=manifest``).

``mmgpt-data check DIR`` reads every row and decodes every file once (``--check headers``: reads only each file's
header), and prints every problem with its file and line; it exits with status 1 when there is any. With
``--cache-dir`` the decoded media go to the media store training reads (``data.cache_dir``).
``mmgpt-data export-synthetic OUT`` writes the embedded synthetic set out as a manifest folder (PNG + WAV + JSON
Lines). ``mmgpt-data shard DIR OUT`` writes a manifest folder as
WebDataset tar shards for streaming (``data=shards data.root=OUT``). ``mmgpt-data tokenizer DIR --vocab-size N``
trains a byte-level BPE on the training texts and captions of a manifest or shards folder and saves it
(``tokenizer.json``) for ``model.net.encoders.text.tokenizer=PATH``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


# The datamodules are imported inside the commands: this entry point sits at the edge, and importing mmgpt
# never pulls in datamodules.
def _check(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.manifest import DecodeSettings, MediaFiles, check_folder
    from mmgpt.datamodules.manifest.media import Progress
    from mmgpt.datamodules.processors import audio_samples

    max_samples = audio_samples(args.max_audio_seconds, args.sample_rate)
    settings = DecodeSettings(args.image_size, args.sample_rate, max_samples,
                              args.max_image_pixels if args.max_image_pixels > 0 else None)
    store = None if args.cache_dir is None else Path(args.cache_dir) / "media-store"
    media = MediaFiles(settings, store, threads=args.threads, keep=store is not None)  # no store: decode and drop
    progress = Progress(f"checking ({args.check})")  # a bar with the time left, on a terminal's stderr
    report = check_folder(args.root, media, allow_outside_root=args.allow_outside_root, check=args.check,
                          progress=progress)
    progress.close()
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.synthetic.export import export_synthetic

    counts = export_synthetic(args.out, args.num_train, args.num_val, args.num_test, args.seed, args.image_size,
                              args.sample_rate, args.max_audio_seconds)
    print(f"wrote {args.out}: {counts} samples; train with: mmgpt-train data=manifest data.root={args.out}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.shards import ShardError, write_shards

    try:
        summary = write_shards(args.root, args.out, args.samples_per_shard, args.allow_outside_root)
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, info in summary["splits"].items():
        print(f"{split}: {info['samples']} samples in {len(info['shards'])} shards")
    print(f"train with: mmgpt-train data=shards data.root={args.out}")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.texts import training_texts
    from mmgpt.errors import UserError
    from mmgpt.tokenizer import train_bpe

    out = args.out or args.root / "tokenizer.json"
    try:
        texts = list(training_texts(args.root))
        if not texts:
            raise UserError(f"{args.root}: the training split has no text or caption to train on")
        tok = train_bpe(texts, args.vocab_size, out, min_frequency=args.min_frequency)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tokens = sum(len(tok.encode_text(t)) for t in texts)
    chars = sum(len(t) for t in texts)
    print(f"wrote {tok.path}: {tok.vocab_size} tokens, trained on {len(texts)} texts "
          f"({chars / max(tokens, 1):.2f} characters per token)")
    print(f"use it with: mmgpt-train model.net.encoders.text.tokenizer={tok.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgpt-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a manifest folder: report every bad row and file")
    check.add_argument("root", type=Path, help="the folder (train.jsonl/.csv, val..., test..., labels.txt)")
    check.add_argument("--image-size", type=int, default=32)
    check.add_argument("--sample-rate", type=int, default=8000)
    check.add_argument("--max-audio-seconds", type=float, default=1.0)
    check.add_argument("--max-image-pixels", type=int, default=89_478_485,
                       help="refuse larger images (data.max_image_pixels; 0: no limit)")
    check.add_argument("--allow-outside-root", action="store_true", help="accept absolute paths and paths outside root")
    check.add_argument("--cache-dir", default=None,
                       help="reuse/fill the media store in CACHE_DIR/media-store (data.cache_dir of training)")
    check.add_argument("--check", choices=("full", "headers"), default="full",
                       help="full: decode every file; headers: read only each file's header (large folders)")
    check.add_argument("--threads", type=int, default=4, help="decoding threads")
    check.add_argument("--limit", type=int, default=None, help="print at most this many problems (default: all)")
    check.set_defaults(func=_check)

    export = sub.add_parser("export-synthetic", help="write the embedded synthetic set as a manifest folder")
    export.add_argument("out", type=Path)
    export.add_argument("--num-train", type=int, default=4000)
    export.add_argument("--num-val", type=int, default=1000)
    export.add_argument("--num-test", type=int, default=1000)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--image-size", type=int, default=32)
    export.add_argument("--sample-rate", type=int, default=8000)
    export.add_argument("--max-audio-seconds", type=float, default=1.0)
    export.set_defaults(func=_export)

    shard = sub.add_parser("shard", help="write a manifest folder as WebDataset tar shards (data=shards)")
    shard.add_argument("root", type=Path, help="the manifest folder")
    shard.add_argument("out", type=Path, help="a new, empty folder for the shards")
    shard.add_argument("--samples-per-shard", type=int, default=256)
    shard.add_argument("--allow-outside-root", action="store_true")
    shard.set_defaults(func=_shard)

    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE on a folder's training texts and captions")
    tokenizer.add_argument("root", type=Path, help="a manifest folder (train.jsonl/.csv) or a shards folder")
    tokenizer.add_argument("--vocab-size", type=int, required=True,
                           help="vocabulary size, the 5 special tokens and 256 byte symbols included")
    tokenizer.add_argument("--out", type=Path, default=None,
                           help="the tokenizer.json to write (default: ROOT/tokenizer.json)")
    tokenizer.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    tokenizer.set_defaults(func=_tokenizer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
