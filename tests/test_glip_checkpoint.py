"""Official GLIP checkpoint reading, loading, conversion and fetching, on tiny synthetic files.

The fetch tests serve files from a local HTTP server on 127.0.0.1 that answers like the hub's
``/{repo}/resolve/{revision}/{filename}`` endpoint; any connection elsewhere fails the test.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from collections import OrderedDict

import pytest
import torch
from torch import nn

from odinw_bench.errors import UserError
from odinw_bench.models.glip.checkpoint import (
    convert_to_safetensors,
    load_glip_state_dict,
    match_keys,
    read_checkpoint,
    read_safetensors_metadata,
    sha256_file,
    strip_ddp_prefix,
    tolerated_reason,
)
from odinw_bench.models.glip.zoo import checkpoint_dir, fetch_checkpoint, zoo_entry


class PickledExtra:
    """Stands for any custom object a checkpoint may carry besides tensors."""

    def __init__(self, value: int):
        self.value = value


def _module(**children: nn.Module) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        setattr(module, name, child)
    return module


def tiny_glip(num_classes: int = 5, prompt_tuning: bool = False, position_ids: bool = True, seed: int = 0):
    """A few modules whose state-dict keys look like the official GLIP ones (incl. the recomputed buffers)."""
    torch.manual_seed(seed)
    attn = _module(qkv=nn.Linear(4, 12))
    attn.register_buffer("relative_position_index", torch.arange(4).view(2, 2))
    body = _module(layers=nn.ModuleList([_module(blocks=nn.ModuleList([_module(attn=attn)]))]))
    backbone = nn.Sequential(OrderedDict(body=body, fpn=_module(fpn_inner2=nn.Conv2d(8, 4, 1))))
    embeddings = _module(word_embeddings=nn.Embedding(10, 8))
    if position_ids:
        embeddings.register_buffer("position_ids", torch.arange(6).unsqueeze(0))
    language = nn.Sequential(OrderedDict(body=_module(model=_module(embeddings=embeddings))))
    head = _module(cls_logits=nn.Conv2d(4, num_classes - 1, 1), dyhead_tower=nn.Sequential(nn.Conv2d(4, 4, 3)))
    head.bias0 = nn.Parameter(torch.randn(1))
    cells = nn.Module()
    for level, stride in enumerate((8, 16)):
        cells.register_buffer(str(level), torch.tensor([[-3.5, -3.5, 4.5, 4.5]]) * stride)
    rpn = _module(head=head, anchor_generator=_module(cell_anchors=cells))
    if prompt_tuning:
        rpn.tunable_linear = nn.Linear(8, 1000, bias=False)
        nn.init.zeros_(rpn.tunable_linear.weight)
    return _module(backbone=backbone, language_backbone=language, rpn=rpn)


def official_file(path, model: nn.Module, extra=None, dtype=None):
    """Save like GLIP's Checkpointer under DDP: module.-prefixed model + EMA + optimizer + scheduler."""
    cast = (lambda v: v.to(dtype) if v.is_floating_point() else v) if dtype else (lambda v: v)
    state = {f"module.{k}": cast(v) for k, v in model.state_dict().items()}
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    data = {
        "model": state,
        "model_ema": ema,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 10, "base_lrs": [1e-4]},
        "iteration": 10,
    }
    if extra is not None:
        data["extra"] = extra
    torch.save(data, path)
    return path


def assert_same_weights(model: nn.Module, reference: nn.Module, keys=None):
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if keys is None or key in keys:
            assert torch.equal(value, ref[key]), key


# ------------------------------------------------------------------------------------------- reading


def test_official_pth_loads_model_not_ema(tmp_path):
    source = tiny_glip(seed=1)
    path = official_file(tmp_path / "glip.pth", source)
    state = read_checkpoint(path)
    assert set(state) == set(source.state_dict())  # `module.` stripped, nothing but `model`
    target = tiny_glip(seed=2)
    report = load_glip_state_dict(target, state)
    assert report.ok and not report.suffix_matched
    assert_same_weights(target, source)


def test_prefix_stripped_only_when_all_keys_have_it():
    both = {"module.a": torch.zeros(1), "module.b.c": torch.zeros(1)}
    assert set(strip_ddp_prefix(both)) == {"a", "b.c"}
    mixed = {"module.a": torch.zeros(1), "b.module.c": torch.zeros(1)}
    assert set(strip_ddp_prefix(mixed)) == set(mixed)


def test_plain_state_dict_and_safetensors_are_read(tmp_path):
    from safetensors.torch import save_file

    source = tiny_glip(seed=3)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    for name in ("plain.pt", "w.safetensors"):
        state = read_checkpoint(tmp_path / name)
        assert set(state) == set(source.state_dict()), name


def test_custom_pickled_object_needs_trust(tmp_path):
    source = tiny_glip(seed=4)
    path = official_file(tmp_path / "custom.pth", source, extra=PickledExtra(7))
    with pytest.raises(UserError, match="--trust-checkpoint") as info:
        read_checkpoint(path)
    assert info.value.path == str(path)
    assert "PickledExtra" in str(info.value)
    state = read_checkpoint(path, trust=True)
    assert torch.equal(state["rpn.head.bias0"], source.rpn.head.bias0.detach())


def test_unreadable_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(UserError, match="cannot read"):
        read_checkpoint(tmp_path / "junk.pth")
    good = official_file(tmp_path / "good.pth", tiny_glip())
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot read"):
        read_checkpoint(tmp_path / "cut.pth")
    torch.save({"model": {"w": torch.zeros(1), "step": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(UserError, match="step"):
        read_checkpoint(tmp_path / "mixed.pth")


# ------------------------------------------------------------------------------------------- loading


def test_tolerated_differences_load_strictly(tmp_path):
    # A released file: pretrained with another NUM_CLASSES, saved without the recomputed buffers.
    source = tiny_glip(num_classes=81, position_ids=True, seed=5)
    state = {k: v for k, v in source.state_dict().items()
             if not k.endswith("relative_position_index") and "anchor_generator" not in k}
    target = tiny_glip(num_classes=7, prompt_tuning=True, position_ids=True, seed=6)
    cls_before = target.rpn.head.cls_logits.weight.detach().clone()
    del state["language_backbone.body.model.embeddings.position_ids"]
    report = load_glip_state_dict(target, state, strict=True)
    assert report.ok
    assert set(report.ignored) == {
        "rpn.head.cls_logits.weight",
        "rpn.head.cls_logits.bias",
        "backbone.body.layers.0.blocks.0.attn.relative_position_index",
        "language_backbone.body.model.embeddings.position_ids",
        "rpn.anchor_generator.cell_anchors.0",
        "rpn.anchor_generator.cell_anchors.1",
        "rpn.tunable_linear.weight",
    }
    assert torch.equal(target.rpn.head.cls_logits.weight, cls_before)
    assert not target.rpn.tunable_linear.weight.any()
    loaded = set(report.loaded)
    assert "rpn.head.bias0" in loaded and "backbone.fpn.fpn_inner2.weight" in loaded
    assert_same_weights(target, source, keys=loaded)


def test_old_transformers_position_ids_are_not_unexpected():
    source = tiny_glip(position_ids=True, seed=7)
    target = tiny_glip(position_ids=False, seed=8)
    report = load_glip_state_dict(target, source.state_dict())
    assert report.ok
    assert "language_backbone.body.model.embeddings.position_ids" in report.ignored


def test_anything_else_is_reported_with_names():
    source = tiny_glip(seed=9)
    state = dict(source.state_dict())
    del state["rpn.head.bias0"]
    state["rpn.head.extra_scale"] = torch.ones(1)
    state["backbone.fpn.fpn_inner2.weight"] = torch.zeros(4, 16, 1, 1)
    target = tiny_glip(seed=10)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError) as info:
        load_glip_state_dict(target, state, strict=True)
    message = str(info.value)
    for name in ("rpn.head.bias0", "rpn.head.extra_scale", "backbone.fpn.fpn_inner2.weight", "(4, 16, 1, 1)"):
        assert name in message
    # A refused load leaves the model untouched.
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key
    report = load_glip_state_dict(target, state, strict=False)
    assert report.missing == ["rpn.head.bias0"] and report.unexpected == ["rpn.head.extra_scale"]
    assert set(report.shape_mismatched) == {"backbone.fpn.fpn_inner2.weight"}
    assert torch.equal(target.backbone.body.layers[0].blocks[0].attn.qkv.weight, source.state_dict()[
        "backbone.body.layers.0.blocks.0.attn.qkv.weight"])


def test_long_problem_lists_are_truncated():
    target = tiny_glip(seed=11)
    state = {f"junk.{i}": torch.zeros(1) for i in range(40)}
    with pytest.raises(UserError, match=r"not in the model \(40\).*and 25 more"):
        load_glip_state_dict(target, state)


def test_suffix_fallback_prefers_the_longest_match():
    source = tiny_glip(seed=12)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("language_backbone.")}
    # The language weights as saved from the sub-module, plus a shorter, wrong candidate.
    for key, value in source.language_backbone.state_dict().items():
        state[key] = value
    state["model.embeddings.word_embeddings.weight"] = torch.zeros(10, 8)
    target = tiny_glip(seed=13)
    report = load_glip_state_dict(target, state, strict=False)
    key = "language_backbone.body.model.embeddings.word_embeddings.weight"
    assert report.suffix_matched[key] == "body.model.embeddings.word_embeddings.weight"
    assert report.unexpected == ["model.embeddings.word_embeddings.weight"] and not report.missing
    assert_same_weights(target, source)


def test_suffix_matching_respects_name_boundaries():
    matches = match_keys(["rpn.head.bias0", "rpn.head.scale"], ["head.bias0", "cale"])
    assert matches == {"rpn.head.bias0": "head.bias0"}


@pytest.mark.parametrize("manifest", ["keys_glip_t.json", "keys_glip_l.json"])
def test_only_buffers_are_tolerated_on_official_key_lists(glip_reference, manifest):
    keys = glip_reference.json(manifest)["keys"]
    tolerated = {k["key"] for k in keys if tolerated_reason(k["key"], "missing")}
    buffers = {k["key"] for k in keys if k["kind"] == "buffer"}
    assert tolerated == buffers  # every recomputed buffer, and no parameter
    assert tolerated_reason("rpn.tunable_linear.weight", "missing")
    shape_ok = {k["key"] for k in keys if tolerated_reason(k["key"], "shape")}
    assert shape_ok == {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"}


def test_fixture_weights_read_back_from_an_official_style_file(glip_reference, tmp_path):
    reference = glip_reference.state_dict
    torch.save({"model": {f"module.{k}": v for k, v in reference.items()}, "model_ema": {}}, tmp_path / "ref.pth")
    state = read_checkpoint(tmp_path / "ref.pth")
    assert set(state) == set(reference) and len(state) == 314
    assert all(torch.equal(state[k], reference[k]) for k in reference)


# ---------------------------------------------------------------------------------------- conversion


def test_sha256_file_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_conversion_round_trips(tmp_path):
    source = tiny_glip(seed=14)
    src = official_file(tmp_path / "glip_half.pth", source, dtype=torch.float16)
    dst = convert_to_safetensors(src, tmp_path / "out" / "glip_half.safetensors")
    assert sorted(p.name for p in dst.parent.iterdir()) == ["glip_half.safetensors"]  # no temp file left
    meta = read_safetensors_metadata(dst)
    assert meta["source_file"] == "glip_half.pth"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    state = read_checkpoint(dst)
    reference = source.state_dict()
    assert set(state) == set(reference)
    for key, value in state.items():
        if reference[key].is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, reference[key].half().float()), key
        else:
            assert value.dtype == reference[key].dtype and torch.equal(value, reference[key]), key
    target = tiny_glip(seed=15)
    assert load_glip_state_dict(target, state).ok


# -------------------------------------------------------------------------------------------- fetching

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serves ``/{repo}/resolve/{revision}/{filename}`` with the headers huggingface_hub requires for a file."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, with_body: bool):
                hub.requests.append((self.command, self.path))
                body = hub.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                self._answer(with_body=False)

            def do_GET(self):  # noqa: N802
                self._answer(with_body=True)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def offline_hub_client(monkeypatch, tmp_path):
    """Keep huggingface_hub local: no telemetry look-ups, its own cache in tmp, and no connection off 127.0.0.1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


@pytest.fixture
def hub(offline_hub_client, monkeypatch):
    source = tiny_glip(seed=21)
    path = "/GLIPModel/GLIP/resolve/main/glip_tiny_model_o365_goldg_cc_sbu.pth"
    import io

    buffer = io.BytesIO()
    official_file(buffer, source)
    server = FakeHub({path: buffer.getvalue()})
    server.source = source
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.close()


def test_fetch_downloads_converts_then_reuses(hub, tmp_path):
    cache = tmp_path / "cache"
    first = fetch_checkpoint("glip-t", cache_dir=cache)
    assert first == checkpoint_dir(cache) / "glip_tiny_model_o365_goldg_cc_sbu.safetensors"
    assert [m for m, _ in hub.requests].count("GET") == 1
    assert (first.parent / "glip_tiny_model_o365_goldg_cc_sbu.pth").is_file()
    target = tiny_glip(seed=22)
    assert load_glip_state_dict(target, read_checkpoint(first)).ok
    assert_same_weights(target, hub.source)
    meta = read_safetensors_metadata(first)
    assert meta["source_sha256"] == sha256_file(first.parent / "glip_tiny_model_o365_goldg_cc_sbu.pth")

    # Second call: served from the cache without any request, even with the hub gone.
    seen = len(hub.requests)
    hub.close()
    assert fetch_checkpoint("glip-t", cache_dir=cache) == first
    assert len(hub.requests) == seen


def test_fetch_uses_cache_env_and_can_delete_the_pth(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("ODINW_BENCH_CACHE", str(tmp_path / "envcache"))
    out = fetch_checkpoint("glip-t", delete_pth=True)
    assert out.is_relative_to(tmp_path / "envcache")
    assert out.is_file() and not (out.parent / "glip_tiny_model_o365_goldg_cc_sbu.pth").exists()


def test_fetch_missing_file_explains_local_checkpoint(hub, tmp_path):
    with pytest.raises(UserError, match="--checkpoint") as info:
        fetch_checkpoint("glip-l", cache_dir=tmp_path)
    assert "glip_large_model.pth" in str(info.value)
    assert ("HEAD", "/GLIPModel/GLIP/resolve/main/glip_large_model.pth") in hub.requests


def test_fetch_unreachable_hub_explains_local_checkpoint(offline_hub_client, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    # The hub client backs off between its retries (about 20 s in all); time is not what is tested here.
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(UserError, match="--checkpoint"):
        fetch_checkpoint("glip-t-a", cache_dir=tmp_path)


def test_zoo_names_files_and_refuses_micro():
    assert zoo_entry("glip-t-a").filename == "glip_a_tiny_o365.pth"
    assert zoo_entry("glip-t-c").filename == "glip_tiny_model_o365_goldg.pth"
    assert zoo_entry("glip-l").official_config == "configs/pretrain/glip_Swin_L.yaml"
    assert zoo_entry("glip-t").repo_id == "GLIPModel/GLIP"
    with pytest.raises(UserError, match="no released checkpoint"):
        zoo_entry("glip-micro")
    with pytest.raises(UserError, match="did you mean 'glip-l'"):
        zoo_entry("glip-ll")


def test_a_runs_lightning_checkpoint_reads_as_glip_weights_and_a_resume_one_is_refused(tmp_path):
    weights = {"backend.model.rpn.deep_prompts.weight": torch.ones(2, 8, 4), "backend.model.backbone.x": torch.zeros(3)}
    best = {"pytorch-lightning_version": "2.6.0", "epoch": 3, "hyper_parameters": {"regime": "deep-prompt"},
            "state_dict": weights}
    torch.save(best, tmp_path / "model_best.ckpt")
    state = read_checkpoint(tmp_path / "model_best.ckpt")
    assert set(state) == {"rpn.deep_prompts.weight", "backbone.x"}  # GLIP's own names
    torch.save({**best, "odinw_frozen_parameters": {"names": ["backend.model.backbone.x"], "sha": "0"}},
               tmp_path / "last.ckpt")
    with pytest.raises(UserError, match="resume checkpoint"):
        read_checkpoint(tmp_path / "last.ckpt")
    torch.save({**best, "state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="no GLIP weights"):
        read_checkpoint(tmp_path / "other.ckpt")


def test_lora_adapters_of_a_run_merge_as_peft_merges_them(tmp_path):
    from odinw_bench.models.glip.run_checkpoint import merge_lora

    gen = torch.Generator().manual_seed(0)
    base, bias = torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    down, up = torch.randn(2, 4, generator=gen), torch.randn(6, 2, generator=gen)
    layer = "language_backbone.body.model.encoder.layer.0.attention.self.query"
    weights = {f"backend.model.{layer}.base_layer.weight": base, f"backend.model.{layer}.base_layer.bias": bias,
               f"backend.model.{layer}.lora_A.default.weight": down, f"backend.model.{layer}.lora_B.default.weight": up,
               "backend.model.rpn.head.bias0": torch.zeros(1)}
    run = {"pytorch-lightning_version": "2.6.0", "hyper_parameters": {"regime": "lora", "lora_scaling": 2.0},
           "state_dict": weights}
    torch.save(run, tmp_path / "model_best.ckpt")
    state = read_checkpoint(tmp_path / "model_best.ckpt")
    assert set(state) == {f"{layer}.weight", f"{layer}.bias", "rpn.head.bias0"}
    torch.testing.assert_close(state[f"{layer}.weight"], base + 2.0 * up @ down)
    x = torch.randn(3, 4, generator=gen)  # what the adapted layer computes: base(x) + scaling * B(A(x))
    torch.testing.assert_close(x @ state[f"{layer}.weight"].T + state[f"{layer}.bias"],
                               x @ base.T + bias + 2.0 * (x @ down.T) @ up.T)
    assert merge_lora({}, 2.0) == {}
    torch.save({**run, "hyper_parameters": {"regime": "lora"}}, tmp_path / "older.ckpt")
    with pytest.raises(UserError, match="does not say their scaling"):
        read_checkpoint(tmp_path / "older.ckpt")
