"""Forward and training-step time of the transformers backends at their presets' resolution, random weights.

Usage:
    python bench/bench_hf_backends.py                                 # gdino-t, mm-gdino-t, owlv2-b; CPU
    python bench/bench_hf_backends.py --presets gdino-t,gdino-b --device cuda --dtype bf16 --repeat 10

Each preset's architecture is built from its transformers config class with random weights (the checkpoints
need the network; timing needs none of their values) and its preset's test resolution (800/1333 for the
Grounding DINO family, 960x960 for OWLv2-B). It times, per preset, as medians after a warm-up: the prediction of one 1333x800 image
(pre-processing excluded, post-processing included) with the Aquarium vocabulary, and a training step (losses,
backward, AdamW) of a batch of ``--batch`` images under ``linear-probe`` and ``full`` as a run sets them up.
Peak memory: CUDA ``max_memory_allocated``; CPU the process's peak RSS so far.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from odinw_bench.models.catalog import load_hf_backend, resolve_model  # noqa: E402
from odinw_bench.training.regimes import (  # noqa: E402
    apply_regime,
    get_regime,
    set_frozen_modules_eval,
)

AQUARIUM = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def save_random(preset: dict, folder: Path) -> Path:
    """The preset's architecture with random weights, and its processor, saved into ``folder``.

    Grounding DINO family: the config class's defaults (Swin-T + BERT-base) and the shipped bert-base-uncased
    vocabulary. OWLv2: the base config (ViT-B/16; the large preset's vision tower is ViT-L/14 at 1008) and, as
    CLIP's BPE files need the network, the tests' offline CLIP tokenizer: the token ids do not change the cost.
    """
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    model_cls = getattr(transformers, preset["model_class"])
    config_cls = getattr(transformers, preset["model_class"].replace("ForObjectDetection", "Config"))
    if preset["model_type"] == "owlv2":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from hf_models import tiny_clip_tokenizer

        config = config_cls(vision_config={"image_size": 960, "patch_size": 16})  # the defaults are OWL-ViT's 768
        if preset["image_size"] != 960:  # ViT-L/14 at 1008
            config = config_cls(vision_config={"hidden_size": 1024, "intermediate_size": 4096,
                                               "num_hidden_layers": 24, "num_attention_heads": 16,
                                               "image_size": 1008, "patch_size": 14},
                                text_config={"hidden_size": 768, "intermediate_size": 3072,
                                             "num_attention_heads": 12}, projection_dim=768)
        model_cls(config).save_pretrained(folder)
        size = preset["image_size"]
        transformers.Owlv2Processor(image_processor=transformers.Owlv2ImageProcessor(
            size={"height": size, "width": size}), tokenizer=tiny_clip_tokenizer()).save_pretrained(folder)
        return folder
    from odinw_bench.data.tokenizer import get_tokenizer

    model_cls(config_cls()).save_pretrained(folder)
    image_processor = transformers.GroundingDinoImageProcessor(
        size={"shortest_edge": preset["shortest_edge"], "longest_edge": preset["longest_edge"]})
    transformers.GroundingDinoProcessor(image_processor=image_processor, tokenizer=get_tokenizer()).save_pretrained(
        folder)
    return folder


def _timed(fn, device: str, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(name: str, device: str, dtype: str, batch: int, repeat: int) -> dict:
    ref = resolve_model(name)
    with tempfile.TemporaryDirectory() as folder:
        backend = load_hf_backend(ref, save_random(ref.preset, Path(folder))).to(device)
    backend.set_vocabulary(AQUARIUM)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    image = Image.new("RGB", (1333, 800), (90, 120, 160))
    test = backend.preprocess([image]).to(device)

    def predict() -> None:
        with torch.inference_mode(), autocast():
            backend.predict(test)

    out = {"input": tuple(test.images.shape[-2:]), "params_M": sum(p.numel() for p in backend.parameters()) / 1e6,
           "predict_s": _timed(predict, device, repeat)}
    images = [image] * batch
    targets = [{"boxes": [[100, 100, 600, 500]], "labels": [i % len(AQUARIUM)]} for i in range(batch)]
    data = backend.preprocess(images, targets, train=True, rng=random.Random(0)).to(device)
    for regime_name in ("linear-probe", "full"):
        regime = get_regime(regime_name)
        apply_regime(backend, regime, freeze_conv_body_at=2)
        backend.train()
        set_frozen_modules_eval(backend, regime, freeze_conv_body_at=2)
        optimizer = torch.optim.AdamW([p for p in backend.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            with autocast():
                loss = sum(backend.compute_losses(data).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        out[f"{regime_name}_step_s"] = _timed(step, device, repeat)
    out["peak_GiB"] = (torch.cuda.max_memory_allocated() if device == "cuda"
                       else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="gdino-t,mm-gdino-t,owlv2-b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=1, help="images per training step")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"torch {torch.__version__}, {args.device}{gpu}, {args.dtype}, {torch.get_num_threads()} CPU threads, "
          f"training batch {args.batch}, median of {args.repeat} after a warm-up")
    peak = "GPU peak" if args.device == "cuda" else "max RSS"
    print(f"{'preset':<12} {'input':<12} {'params':>8} {'predict s':>10} {'LP step s':>10} {'full step s':>12} "
          f"{peak:>9}")
    for name in args.presets.split(","):
        r = bench(name, args.device, args.dtype, args.batch, args.repeat)
        print(f"{name:<12} {str(r['input']):<12} {r['params_M']:7.1f}M {r['predict_s']:10.2f} "
              f"{r['linear-probe_step_s']:10.2f} {r['full_step_s']:12.2f} {r['peak_GiB']:7.2f}GiB", flush=True)


if __name__ == "__main__":
    main()
