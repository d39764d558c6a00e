"""Registry, save/load, head adaptation and downloads against a real HTTP server on 127.0.0.1."""

import contextlib
import hashlib
import logging
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import toy  # noqa: F401  (registers toy_attention_classifier)

import gatedzoo
from gatedzoo.io import ChecksumError, IncompleteDownloadError, sha256sum
from gatedzoo.zoo import PretrainedTag, create_model, list_models, model_info
from gatedzoo.zoo.registry import register_pretrained


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("toy_attention_classifier", dim=16)
    model.zoo_config["label_names"] = list("abcdefghij")
    folder = model.save_pretrained(tmp_path / "toy")
    return model, folder


class Handler(SimpleHTTPRequestHandler):
    """Serves a folder; paths under /broken/ announce the full length but send half, then hang up."""

    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.requests.append(self.path)
        if not self.path.startswith("/broken/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path[len("/broken/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server(saved):
    _, folder = saved
    Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Handler(*a, directory=str(folder.parent), **k))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEDZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "cache"


def tag(name, url, folder, wrong=False):
    digests = {f: sha256sum(folder / f) for f in ("config.json", "model.safetensors")}
    if wrong:
        digests["model.safetensors"] = "0" * 64
    entry = PretrainedTag(name=f"toy_attention_classifier.{name}", arch="toy_attention_classifier", tag=name,
                          url=url, sha256=digests)
    register_pretrained(entry)
    return entry.name


def same_outputs(a, b):
    x = torch.rand(3, 64)
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b(x))


def test_registry_lists_and_describes():
    assert "toy_attention_classifier" in list_models("toy_*")
    assert list_models("nothing_like_this*") == []
    info = model_info("toy_attention_classifier")
    assert info["task"] == "toy_classification" and info["family"] == "toy"
    with pytest.raises(KeyError, match="unknown architecture"):
        create_model("no_such_arch")


def test_roundtrip_local_dir_folder_and_file(saved):
    model, folder = saved
    for source in (f"local-dir:{folder}", str(folder), str(folder / "model.safetensors")):
        loaded = create_model(source)
        same_outputs(model, loaded)
        assert loaded.zoo_config["label_names"] == list("abcdefghij")
        assert loaded.zoo_config["model_args"] == {"dim": 16}


def test_download_cache_hit_and_offline(saved, server, cache, monkeypatch):
    model, folder = saved
    name = tag("remote", f"{server}/toy", folder)
    loaded = create_model(name, pretrained=True)
    same_outputs(model, loaded)
    assert sorted(Handler.requests) == ["/toy/config.json", "/toy/model.safetensors"]
    create_model(name, pretrained=True)
    assert len(Handler.requests) == 2  # the second load is a cache hit
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same_outputs(model, create_model(name, pretrained=True))
    assert len(Handler.requests) == 2


def test_offline_without_cache_says_how_to_fix(saved, server, cache, monkeypatch):
    _, folder = saved
    name = tag("offline", f"{server}/toy", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="offline mode is on"):
        create_model(name, pretrained=True)
    assert Handler.requests == []


def test_checksum_mismatch_caches_nothing(saved, server, cache):
    _, folder = saved
    name = tag("tampered", f"{server}/toy", folder, wrong=True)
    with pytest.raises(ChecksumError, match="expected 0000"):
        create_model(name, pretrained=True)
    leftovers = [p.name for p in (cache / name).iterdir() if p.name != "config.json"]
    assert leftovers == []


def test_interrupted_download_leaves_no_partial_file(saved, server, cache):
    _, folder = saved
    name = tag("broken", f"{server}/broken/toy", folder)
    with pytest.raises(IncompleteDownloadError):
        create_model(name, pretrained=True)
    assert not any(p.suffix == ".part" or p.name == "model.safetensors" for p in cache.rglob("*"))


def test_head_adapts_and_is_logged(saved, caplog):
    model, folder = saved
    with caplog.at_level(logging.WARNING, logger="gatedzoo"):
        five = create_model(str(folder), num_classes=5)
    assert five.head.out_features == 5
    assert "num_classes 10 -> 5" in caplog.text and "head.weight" in caplog.text
    torch.testing.assert_close(five.embed.weight, model.embed.weight)
    assert five.zoo_config["adapted_from"]["changed"] == {"num_classes": [10, 5]}


def test_non_head_mismatch_and_strictness(saved, tmp_path):
    _, folder = saved
    with pytest.raises(ValueError, match=r"Only the head \(and an image model.s input channels\) adapts"):
        create_model(str(folder), dim=32)
    other = create_model("toy_attention_classifier", dim=16, activation="softmax")
    other.save_pretrained(tmp_path / "other")
    state_file = tmp_path / "other" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(state_file))
    state.pop("embed.weight")
    save_file(state, str(state_file))
    with pytest.raises(ValueError, match="missing"):
        create_model(str(tmp_path / "other"))
    assert create_model(str(tmp_path / "other"), strict=False) is not None


def test_missing_sources_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_model(f"local-dir:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model(str(tmp_path / "nope" / "model.safetensors"))
    with pytest.raises(KeyError, match="no pretrained weights"):
        create_model("toy_attention_classifier.nonexistent", pretrained=True)


class HubHandler(BaseHTTPRequestHandler):
    """A Hub stand-in: answers `/{org}/{repo}/resolve/{rev}/{file}` with the headers huggingface_hub reads."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def _head(self):
        HubHandler.requests.append(f"{self.command} {self.path}")
        data = HubHandler.files.get(self.path.rsplit("/", 1)[-1])
        if data is None or "/resolve/" not in self.path:
            self.send_response(404)
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", "c" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        data = self._head()
        if data is not None:
            self.wfile.write(data)


@pytest.fixture
def hub(saved, tmp_path, monkeypatch):
    import huggingface_hub.constants

    _, folder = saved
    HubHandler.files = {p.name: p.read_bytes() for p in folder.iterdir()}
    HubHandler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield
    httpd.shutdown()
    httpd.server_close()


def test_hf_hub_download_then_offline_cache(saved, hub, monkeypatch):
    model, _ = saved
    same_outputs(model, create_model("hf-hub:gatedzoo/toy"))
    assert "GET /gatedzoo/toy/resolve/main/model.safetensors" in HubHandler.requests
    seen = len(HubHandler.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same_outputs(model, create_model("hf-hub:gatedzoo/toy"))
    assert len(HubHandler.requests) == seen  # offline: served from huggingface_hub's cache, no request


def test_hf_hub_offline_without_cache_raises(hub, monkeypatch):
    import huggingface_hub.errors

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):  # raised by huggingface_hub itself
        create_model("hf-hub:gatedzoo/not-cached")
    assert HubHandler.requests == []


def test_timm_hf_hub_reads_a_gatedzoo_image_repo(tmp_path, monkeypatch):
    """A gatedzoo image folder pushed to the Hub as is opens with `timm.create_model("hf-hub:...")`: save_pretrained
    writes the `pretrained_cfg` entry timm's loader reads (without it timm took the whole config.json as one and
    failed on `model_args`)."""
    import huggingface_hub.constants
    import timm

    torch.manual_seed(0)
    model = create_model("gated_swinrmt_swat_tiny.fmnist", num_classes=3).eval()
    folder = model.save_pretrained(tmp_path / "ft3", label_names=["Ankle boot", "T-shirt-top", "Trouser"])
    HubHandler.files = {p.name: p.read_bytes() for p in folder.iterdir()}
    HubHandler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # timm calls huggingface_hub without an endpoint: the one huggingface_hub read from HF_ENDPOINT at import
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        t = timm.create_model("hf-hub:someone/ft3", pretrained=True).eval()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "GET /someone/ft3/resolve/main/model.safetensors" in HubHandler.requests
    assert t.num_classes == 3 and t.pretrained_cfg["label_names"] == ["Ankle boot", "T-shirt-top", "Trouser"]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(t(x), model(x))


def test_save_pretrained_is_atomic(saved, monkeypatch):
    model, folder = saved
    before = sha256sum(folder / "model.safetensors")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gatedzoo.zoo.pretrained.save_file", boom)
    with contextlib.suppress(KeyboardInterrupt):
        model.save_pretrained(folder)
    assert sha256sum(folder / "model.safetensors") == before
    assert not list(folder.glob(".*.part"))


def test_public_api_is_pinned():
    assert sorted(gatedzoo.__all__) == sorted(
        ["attention", "create_model", "diagnose", "list_models", "model_info", "save_pretrained", "__version__"]
    )
    import gatedzoo.kernels as k

    assert sorted(k.__all__) == sorted([
        "AttentionArgs", "attention", "attention_probs", "attention_reference", "distance_matrix", "select_backend",
        "triton_unsupported_reason", "validate",
    ])


def test_adapt_input_conv_keeps_the_response_to_replicated_channels():
    from gatedzoo.zoo.pretrained import adapt_input_conv

    w = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    conv = lambda inp, weight: torch.nn.functional.conv2d(inp, weight)  # noqa: E731
    want = conv(x.repeat(1, 3, 1, 1), w)
    torch.testing.assert_close(conv(x, adapt_input_conv(w, 1)), want)          # RGB weights, grey input
    torch.testing.assert_close(conv(x.repeat(1, 6, 1, 1), adapt_input_conv(w, 6)), want)  # a multiple: exact
    assert adapt_input_conv(w, 5).shape == (8, 5, 3, 3)


def test_a_tag_loads_its_weights_without_pretrained(saved, server, cache):
    """`create_model("arch.tag")` is `create_model("arch.tag", pretrained=True)` (the docstring's "implied")."""
    model, folder = saved
    name = tag("implied", f"{server}/toy", folder)
    loaded = create_model(name)
    same_outputs(model, loaded)
    assert loaded.zoo_config["label_names"] == list("abcdefghij")


def test_a_reinitialised_head_drops_label_names_and_metrics(saved, tmp_path):
    """Names and scores of the source describe its head: a new head must not be saved with them."""
    model, folder = saved
    model.save_pretrained(tmp_path / "scored", metrics={"acc": 0.9})
    five = create_model(str(tmp_path / "scored"), num_classes=5)
    assert "label_names" not in five.zoo_config and "metrics" not in five.zoo_config
    assert five.zoo_config["adapted_from"]["source_metrics"] == {"acc": 0.9}
    same = create_model(str(tmp_path / "scored"))
    assert same.zoo_config["label_names"] == list("abcdefghij") and same.zoo_config["metrics"] == {"acc": 0.9}
