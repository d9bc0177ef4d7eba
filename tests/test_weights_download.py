"""torchvision's weights by name (``weights="DEFAULT"``, the enums), without a network (issue 27).

Three paths, each as torchvision's builder takes it:

1. the file is in torch hub's cache (``$TORCH_HOME/hub/checkpoints``): it is read, nothing is fetched, and
   the model equals torchvision's own builder reading the same cache;
2. it is not: torch.hub downloads it (here from a local HTTP server on 127.0.0.1, "a local archive")
   into the cache under the URL's file name, after checking the SHA-256 digits in that name; a second call
   reads the cache; a file whose digest does not match never lands there;
3. offline (no name resolution, a server that never answers): a one-line ``DownloadError`` naming the file
   to place and where, within a fraction of a second (or the download timeout).

Nothing here reaches the internet: every test points ``TORCH_HOME`` at a temporary folder, and the URLs it
lets torch.hub open are the local server's. The checkpoints are torchvision's own layout with random
weights (``weights=None``), saved as torchvision's files would be.
"""
import hashlib
import http.server
import os
import socket
import threading
import time
import urllib.error
from functools import partial

import pytest
import torch
import torch.hub
import torchvision
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
from torchvision.models.detection import maskrcnn_resnet50_fpn as tv_maskrcnn_resnet50_fpn

import mrcnn_lite as ml
from mrcnn_lite import torchvision_compat, torchvision_weights
from mrcnn_lite import DownloadError

COCO_V1 = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
COCO_V1_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"  # the file name of torchvision's COCO_V1 URL
RESNET50_DEFAULT_FILE = "resnet50-11ad3fa6.pth"          # ResNet50_Weights.DEFAULT is IMAGENET1K_V2
SMALL = dict(min_size=128, max_size=192, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
             box_detections_per_img=8)
TOL = 1e-6


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache for every test; the user's own cache is never read or written."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert torch.hub.get_dir() == str(home / "hub")
    return home / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    """torchvision's Mask R-CNN state dict (91 classes, random weights, float32) saved like its COCO file.
    The class scores are sharpened so that an image gives confident detections to compare."""
    torch.manual_seed(0)
    tv = tv_maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = tv.state_dict()
    state["roi_heads.box_predictor.cls_score.weight"].mul_(50)
    path = tmp_path_factory.mktemp("archive") / "coco.pth"
    torch.save(state, path)
    return path


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _no_download(*args, **kwargs):
    raise AssertionError("torch.hub tried to download")


def _image():
    return [torch.rand(3, 150, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)]


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for the folder it returns; ``requests`` lists the paths it was asked for."""
    root = tmp_path / "served"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            requests.append(self.path)

        def log_message(self, fmt, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# --------------------------------------------------------------------------------------------------
# 1. a file in torch hub's cache is read as torchvision reads it
# --------------------------------------------------------------------------------------------------

@pytest.mark.heavy
def test_default_weights_from_the_cache_equal_torchvisions_model(coco_file, torch_home, monkeypatch):
    torch_home.mkdir(parents=True)
    os.symlink(coco_file, torch_home / COCO_V1_FILE)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    monkeypatch.setattr(torch.hub, "urlopen", _no_download)
    source = torch.load(coco_file, weights_only=True)
    for weights in (COCO_V1, "DEFAULT", "COCO_V1", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
                    MaskRCNN_ResNet50_FPN_Weights.DEFAULT):
        state = torchvision_compat.read_weights(weights, "weights")
        assert state.keys() == source.keys() and all(torch.equal(state[k], source[k]) for k in source), weights

    ours = ml.maskrcnn_resnet50_fpn(weights="DEFAULT", **SMALL)
    tv = tv_maskrcnn_resnet50_fpn(weights="DEFAULT", **SMALL)  # torchvision reads the same cached file
    assert ours.num_classes == 91
    tv_state = tv.state_dict()
    assert all(torch.equal(v, tv_state[k]) for k, v in ours.state_dict().items())
    ours, tv = ours.double().eval(), tv.double().eval()
    with torch.no_grad():
        got, expected = ours(_image())[0], tv(_image())[0]
    assert len(got["boxes"]) == len(expected["boxes"]) == 8  # box_detections_per_img: confident detections
    for k in ("boxes", "scores", "masks"):
        assert (got[k] - expected[k]).abs().max().item() < TOL, k
    assert torch.equal(got["labels"], expected["labels"])


def test_weights_backbone_default_from_the_cache_equals_torchvision(torch_home, monkeypatch):
    torch_home.mkdir(parents=True)
    torch.manual_seed(1)
    imagenet = torchvision.models.resnet50().state_dict()
    torch.save(imagenet, torch_home / RESNET50_DEFAULT_FILE)
    monkeypatch.setattr(torch.hub, "urlopen", _no_download)
    ours = ml.maskrcnn_resnet50_fpn(weights_backbone="DEFAULT", num_classes=2)
    tv = tv_maskrcnn_resnet50_fpn(weights_backbone=ResNet50_Weights.DEFAULT, num_classes=2)
    body = {k: v for k, v in tv.backbone.body.state_dict().items()}
    assert ours.backbone.body.state_dict().keys() == body.keys()
    assert all(torch.equal(v, body[k]) for k, v in ours.backbone.body.state_dict().items())
    assert torch.equal(ours.backbone.body.conv1.weight, imagenet["conv1.weight"])
    assert sum(p.requires_grad for p in ours.parameters()) == sum(p.requires_grad for p in tv.parameters())


def test_a_corrupt_file_in_the_cache_is_named(torch_home, monkeypatch):
    torch_home.mkdir(parents=True)
    (torch_home / COCO_V1_FILE).write_bytes(b"not a checkpoint")
    monkeypatch.setattr(torch.hub, "urlopen", _no_download)
    with pytest.raises(ValueError, match="not a readable checkpoint") as err:
        ml.maskrcnn_resnet50_fpn(weights="DEFAULT")
    message = str(err.value)
    assert "\n" not in message and str(torch_home / COCO_V1_FILE) in message and "delete it" in message


# --------------------------------------------------------------------------------------------------
# 2. not in the cache: torch.hub downloads it, checks its hash and keeps it
# --------------------------------------------------------------------------------------------------

def test_download_lands_in_the_cache_under_torchvisions_name_once(coco_file, server, torch_home, monkeypatch):
    root, base, requests = server
    # A file name must carry the first digits of its own SHA-256 (torch.hub checks them); the local archive's
    # URL has the same form as torchvision's, with this file's digits.
    name = f"maskrcnn_resnet50_fpn_coco-{_sha256(coco_file)[:8]}.pth"
    os.symlink(coco_file, root / name)
    monkeypatch.setattr(COCO_V1.value, "url", base + name)

    model = ml.maskrcnn_resnet50_fpn(weights="DEFAULT", progress=False, **SMALL)
    cached = torch_home / name
    assert requests == ["/" + name]
    assert cached.is_file() and _sha256(cached) == _sha256(coco_file)
    assert sorted(p.name for p in torch_home.iterdir()) == [name]  # no temporary file left
    source = torch.load(coco_file, weights_only=True)
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if k in source)
    assert socket.getdefaulttimeout() is None  # the download's timeout does not outlive it

    again = ml.maskrcnn_resnet50_fpn(weights=COCO_V1, **SMALL)  # from the cache: no second request
    assert requests == ["/" + name]
    assert torch.equal(again.roi_heads.mask_predictor.mask_fcn_logits.weight,
                       source["roi_heads.mask_predictor.mask_fcn_logits.weight"])


def test_a_download_that_fails_its_checksum_never_lands(coco_file, server, torch_home, monkeypatch):
    root, base, requests = server
    os.symlink(coco_file, root / COCO_V1_FILE)  # torchvision's name, but not torchvision's bytes
    monkeypatch.setattr(COCO_V1.value, "url", base + COCO_V1_FILE)
    with pytest.raises(DownloadError, match="failed its checksum") as err:
        ml.maskrcnn_resnet50_fpn(weights="COCO_V1", progress=False)
    message = str(err.value)
    assert "\n" not in message and 'expected "bf2d0c1e"' in message
    assert f"at {torch_home / COCO_V1_FILE}" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one line, no chained traceback
    assert requests == ["/" + COCO_V1_FILE] and list(torch_home.iterdir()) == []


def test_an_http_error_names_the_file_to_place(server, torch_home, monkeypatch):
    _, base, requests = server
    monkeypatch.setattr(COCO_V1.value, "url", base + COCO_V1_FILE)  # the server does not have it
    with pytest.raises(DownloadError, match="HTTP Error 404") as err:
        ml.maskrcnn_resnet50_fpn(weights=COCO_V1, progress=False)
    assert f"place the file from {base + COCO_V1_FILE} at {torch_home / COCO_V1_FILE}" in str(err.value)
    assert requests == ["/" + COCO_V1_FILE] and list(torch_home.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# 3. offline: one line, at once
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argument, weights, file", [
    ("weights", COCO_V1, COCO_V1_FILE),
    ("weights", "DEFAULT", COCO_V1_FILE),
    ("weights", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", COCO_V1_FILE),
    ("weights_backbone", "DEFAULT", RESNET50_DEFAULT_FILE),
    ("weights_backbone", ResNet50_Weights.IMAGENET1K_V1, "resnet50-0676ba61.pth"),
])
def test_offline_fails_at_once_naming_the_file_and_the_cache(argument, weights, file, torch_home, monkeypatch):
    calls = []

    def no_network(request, *args, **kwargs):  # what urlopen raises when no name resolves
        calls.append(request.full_url)
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        ml.maskrcnn_resnet50_fpn(**{argument: weights}, progress=False)
    seconds = time.perf_counter() - start
    assert seconds < 0.5, seconds
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, OSError)
    assert message.startswith(f"{argument}=") and "Temporary failure in name resolution" in message
    assert f"at {torch_home / file} and run again" in message
    assert calls == [f"https://download.pytorch.org/models/{file}"]  # torchvision's URL, asked once
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert list(torch_home.iterdir()) == []  # torch.hub removed its temporary file


def test_a_server_that_never_answers_times_out(torch_home, monkeypatch):
    """A network that swallows packets: the connection opens, no reply comes. The download gives up after
    DOWNLOAD_TIMEOUT seconds (here 0.3) with the one-line error, and the program's socket default is kept."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{COCO_V1_FILE}"
        monkeypatch.setattr(COCO_V1.value, "url", url)
        monkeypatch.setattr(torchvision_weights, "DOWNLOAD_TIMEOUT", 0.3)
        start = time.perf_counter()
        with pytest.raises(DownloadError, match="timed out") as err:
            ml.maskrcnn_resnet50_fpn(weights="DEFAULT", progress=False)
        seconds = time.perf_counter() - start
    finally:
        silent.close()
    assert 0.3 <= seconds < 3.0, seconds
    assert f"at {torch_home / COCO_V1_FILE}" in str(err.value)
    assert socket.getdefaulttimeout() is None


def test_weights_of_another_model_or_an_unknown_name_are_refused_before_any_download(monkeypatch):
    monkeypatch.setattr(torch.hub, "urlopen", _no_download)
    with pytest.raises(TypeError, match="expected MaskRCNN_ResNet50_FPN_Weights"):
        ml.maskrcnn_resnet50_fpn(weights=ResNet50_Weights.DEFAULT)  # torchvision refuses it too
    with pytest.raises(FileNotFoundError, match=r"ResNet50_Weights\.DEFAULT not found.*COCO_V1, DEFAULT"):
        ml.maskrcnn_resnet50_fpn(weights="ResNet50_Weights.DEFAULT")
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        ml.maskrcnn_resnet50_fpn(weights_backbone="COCO_V1")
