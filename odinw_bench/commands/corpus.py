"""``python -m odinw_bench corpus``: write the synthetic grounding corpus that ``pretrain`` reads."""

from __future__ import annotations

import argparse

HELP = "write a synthetic grounding corpus (76 drawn categories, detection prompts and grounding phrases)"

EPILOG = """\
examples:
  python -m odinw_bench corpus --out corpus/ --images 10000                 # ~1-2 min, ~135 MB; seed 0
  python -m odinw_bench corpus --out small/ --images 200 --seed 1 --size 160x128
  python -m odinw_bench pretrain --corpus corpus/ --out pretrain/            # then pre-train glip-nano on it

The same --images, --seed and --size give byte-identical files; image i depends only on (seed, i), so a larger
corpus extends a smaller one. The corpus is written into a temporary folder and renamed into place: an interrupted
run leaves nothing behind. An existing --out is refused unless --overwrite.
"""


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 160x128, got {text!r}") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"images must be at least 32x32, got {text!r}")
    return width, height


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="corpus folder to create")
    parser.add_argument("--images", type=_count, default=10000, help="number of images (default: 10000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.add_argument("--size", type=_size, default=(160, 128),
                        help="WIDTHxHEIGHT of every image (default: 160x128)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from odinw_bench.data.corpus_reader import read_corpus
    from odinw_bench.data.grounding_corpus import write_corpus

    path = write_corpus(args.out, args.images, args.seed, args.size, overwrite=args.overwrite,
                        progress=not args.no_progress)
    corpus = read_corpus(path, check_images=False)
    print(f"wrote {path}: {len(corpus.images)} images, {len(corpus.annotations)} boxes, {len(corpus.captions)} "
          f"captions, {len(corpus.categories)} categories")
    return 0
