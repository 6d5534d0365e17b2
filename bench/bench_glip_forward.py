"""Time GLIP inference at the official test size (short side 800, max 1333), batch 1, and report peak memory.

Usage:
    python bench/bench_glip_forward.py                       # glip-micro and glip-t on CPU (and CUDA if present)
    python bench/bench_glip_forward.py --models glip-t --devices cuda --dtype bf16 --repeat 20

Each model runs on two computation paths, interleaved pass by pass on the same weights and input: ``fast`` (the
default: text trimmed to the caption, gather-based deformable convolutions) and ``reference`` (GLIP's padding to
256 tokens, torchvision's deformable kernels). The ``vs reference`` line gives the forward speed-up, the largest
difference of the real tokens' logits and whether the detections are identical.

Weights are random (no checkpoint is needed to time the architecture); the post-processor runs on whatever the
random head scores, capped at 1000 candidates per level as in GLIP, so its share is an upper bound. Inference runs
under ``torch.inference_mode`` (no autograd graph). Prints one line per (model, device, dtype).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from odinw_bench.models.glip.backend import GLIPBackend  # noqa: E402
from odinw_bench.models.glip.config import get_preset  # noqa: E402
from odinw_bench.models.glip.dyconv import set_deform_implementation  # noqa: E402

#: Computation paths: (trim the text to the captions, deformable convolution implementation).
PATHS = {"fast": (True, "sampled"), "reference": (False, "torchvision")}

AQUARIUM = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_one(preset: str, device: str, dtype: str, repeat: int, warmup: int) -> dict:
    """Time preprocessing, the network forward and post-processing of one 1333x800 image on both paths."""
    torch.manual_seed(0)
    cfg = get_preset(preset)
    # Every preset is timed at GLIP's test size; glip-micro's own default is smaller.
    cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size_test=800, max_size_test=1333))
    backend = GLIPBackend(cfg).eval().to(device)
    backend.set_vocabulary(AQUARIUM)
    image = Image.new("RGB", (1333, 800), (90, 120, 160))
    batch = backend.preprocess([image]).to(device)
    chunk = backend.prompt.chunks[0]
    ids, mask = backend.chunk_tokens(chunk, 1, torch.device(device))
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = {path: {"forward": [], "postprocess": []} for path in PATHS}
    last = {}
    with torch.inference_mode(), autocast:
        for i in range(warmup + repeat):
            for path, (trim_text, deform) in PATHS.items():  # interleaved: both paths see the same machine state
                backend.model.trim_text = trim_text
                set_deform_implementation(backend.model, deform)
                _sync(device)
                t0 = time.perf_counter()
                outputs, anchors = backend.model.forward_head(batch.images, ids, mask)
                _sync(device)
                t1 = time.perf_counter()
                detections = backend.model.rpn.post_processor(outputs["logits"], outputs["bbox_reg"],
                                                              outputs["centerness"], anchors, chunk.positive_map,
                                                              batch.image_sizes)
                _sync(device)
                t2 = time.perf_counter()
                last[path] = (outputs["logits"], detections)
                if i >= warmup:
                    times[path]["forward"].append(t1 - t0)
                    times[path]["postprocess"].append(t2 - t1)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "model": preset, "device": device, "dtype": dtype, "input": tuple(batch.images.shape[-2:]),
        "params_M": sum(p.numel() for p in backend.parameters()) / 1e6,
        "paths": {path: {"forward_ms": 1000 * statistics.median(t["forward"]),
                         "post_ms": 1000 * statistics.median(t["postprocess"])} for path, t in times.items()},
        "peak_MiB": peak, **_agreement(last["fast"], last["reference"]),
    }


def _agreement(fast: tuple, reference: tuple) -> dict:
    """Largest |logit difference| over the real tokens' columns, and whether the detections are identical."""
    width = fast[0][0].shape[-1]
    logit_diff = max((a.float() - b[..., :width].float()).abs().max().item() for a, b in zip(fast[0], reference[0]))
    same = all(len(a["scores"]) == len(b["scores"]) and torch.equal(a["labels"], b["labels"])
               and torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"],
                                                                              atol=1e-4)
               for a, b in zip(fast[1], reference[1]))
    return {"max_logit_diff": logit_diff, "same_detections": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="glip-micro,glip-t")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'model':<11} {'device':<6} {'dtype':<5} {'input':<11} {'params':>8} {'path':<9} {'forward':>11} "
          f"{'post':>8}")
    for preset in args.models.split(","):
        for device in args.devices.split(","):
            r = bench_one(preset, device, args.dtype, args.repeat, args.warmup)
            peak_kind = "GPU" if device == "cuda" else "RSS"
            for path, t in r["paths"].items():
                print(f"{r['model']:<11} {r['device']:<6} {r['dtype']:<5} {str(r['input']):<11} {r['params_M']:7.1f}M "
                      f"{path:<9} {t['forward_ms']:9.1f}ms {t['post_ms']:6.1f}ms", flush=True)
            speedup = r["paths"]["reference"]["forward_ms"] / r["paths"]["fast"]["forward_ms"]
            print(f"  vs reference: forward {speedup:.2f}x faster, max |logit diff| {r['max_logit_diff']:.1e} on the "
                  f"real tokens, detections {'identical' if r['same_detections'] else 'DIFFER'}; "
                  f"peak {r['peak_MiB']:.0f}MiB {peak_kind} (both paths)", flush=True)

if __name__ == "__main__":
    main()
