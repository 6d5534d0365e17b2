"""How well pre-trained weights ground names: phrase-choice accuracy on held-out corpus captions.

Usage:
    python -m odinw_bench corpus --out /tmp/heldout --images 60 --seed 7       # images the pre-training never saw
    python bench/bench_grounding.py --corpus /tmp/heldout                       # the shipped glip-nano
    python bench/bench_grounding.py --corpus /tmp/heldout --weights out/glip-nano.safetensors --kind grounding

For every box a caption grounds, the model's token logits are read at the anchors whose centres lie in the box;
each of the caption's phrases scores the best mean logit over its tokens there, and the box counts as a hit when
its own phrase scores highest. Chance is 1 / (phrases in the caption). A model that localises objects but has not
learned names (zero-shot AP that does not change when the prompt's names change) sits near chance; it is a quick
check of a pre-training run before spending an evaluation, or 90 minutes of CPU, on it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def phrase_choice(backend, corpus, kind: str, limit: int, batch_size: int = 4) -> tuple[int, int, float]:
    """``(hits, boxes, chance)`` over the first ``limit`` captions of ``kind`` (``detection`` or ``grounding``)."""
    import torch

    from odinw_bench.training.pretrain_data import GroundingCaptions, GroundingCollate

    config = backend.config
    dataset = GroundingCaptions(corpus, config.language.max_query_len)
    collate = GroundingCollate(config.input, config.language.max_query_len)
    picked = [i for i, c in enumerate(corpus.captions) if c.kind == kind][:limit]
    hits = boxes = 0
    chance = 0.0
    for start in range(0, len(picked), batch_size):
        batch = collate([dataset[i] for i in picked[start:start + batch_size]])
        with torch.no_grad():
            outputs, anchors = backend.model.forward_head(batch.images, batch.input_ids, batch.attention_mask)
        logits, anchors = torch.cat(outputs["logits"], 1), torch.cat(anchors, 0)  # (B, A, L), (A, 4)
        cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
        for image, target in enumerate(batch.targets):
            phrases = target["positive_map"].bool()[:, :logits.shape[-1]]  # (G, L'): the model trims padding
            for g, (x0, y0, x1, y1) in enumerate(target["boxes"].tolist()):
                inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
                if not inside.any():
                    continue
                at_box = logits[image][inside]  # (a, L)
                scores = torch.stack([at_box[:, row].mean(1).max() for row in phrases])
                hits += int(scores.argmax() == g)
                boxes += 1
                chance += 1.0 / len(phrases)
    return hits, boxes, chance / max(boxes, 1)


def main() -> None:
    import torch

    from odinw_bench.data.corpus_reader import read_corpus
    from odinw_bench.models.glip.backend import load_glip

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="a held-out corpus (another --seed than the pre-training's)")
    parser.add_argument("--weights", default=None, help="a .safetensors file (default: the shipped glip-nano)")
    parser.add_argument("--model", default="glip-nano")
    parser.add_argument("--kind", choices=("detection", "grounding"), default="detection")
    parser.add_argument("--captions", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backend = load_glip(args.model, checkpoint=args.weights).eval()
    hits, boxes, chance = phrase_choice(backend, read_corpus(args.corpus), args.kind, args.captions)
    print(f"{args.model} ({args.weights or 'shipped weights'}), {args.kind} captions: phrase-choice accuracy "
          f"{hits}/{boxes} = {hits / max(boxes, 1):.2f} (chance {chance:.2f})")


if __name__ == "__main__":
    main()
