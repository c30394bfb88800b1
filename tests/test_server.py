"""medsynth-serve: a real uvicorn server on 127.0.0.1, real HTTP (httpx and the stdlib client), real files."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import uvicorn

from medsynth.cli import convert_main
from medsynth.cli.serve import main
from medsynth.client import remote_translate, zip_folder
from medsynth.errors import InputError
from medsynth.inference import Translator
from medsynth.io import itk_affine, load_image
from medsynth.server import create_app, model_name

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[1]


# ---- helpers ---------------------------------------------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, access_log=False, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def assert_tmp_empty(root: Path) -> None:
    # the folder goes when the answer has been sent, which can be a moment after the client has read it
    wait_until(lambda: not any(root.iterdir()), timeout=5)


def head_phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """An ellipsoid with an off-centre bright blob and noise on a zero background; the seed moves the blob, so
    every volume differs and a flip or an answer to another request shows in a comparison."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = sum((g / 0.8) ** 2 for g in grids) < 1
    centre = rng.uniform(-0.4, 0.4, 3)
    blob = sum((g - c) ** 2 for g, c in zip(grids, centre)) < 0.1
    vol = head * (400.0 + 40 * grids[0]) + blob * rng.uniform(200, 500) + head * rng.normal(0, 15, shape)
    return np.clip(vol, 0, None).astype(np.float32)


def oblique_affine(spacing: tuple[float, float, float] = (0.9, 1.2, 2.5)) -> np.ndarray:
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = (-30.5, 12.25, 40.0)
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 2) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    return path


def write_itk(path: Path, data: np.ndarray) -> Path:
    img = sitk.GetImageFromArray(data)  # (K, J, I) array -> (I, J, K) image
    img.SetSpacing((0.8, 1.1, 2.0))
    img.SetOrigin((12.5, -40.0, 7.25))
    direction = oblique_affine((1.0, 1.0, 1.0))[:3, :3]
    img.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(img, str(path))
    return path


def volume(folder: Path, name: str, seed: int = 0, shape: tuple[int, int, int] = (16, 16, 8)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_nifti(folder / name, head_phantom(shape, seed), oblique_affine())


def expected_output(translator: Translator, in_path: Path, folder: Path, **options: Any) -> Path:
    """What the Python API writes for the same file and options (the server must answer exactly this)."""
    folder.mkdir(parents=True, exist_ok=True)
    return translator.translate_file(in_path, folder / f"expected_{in_path.name}", **options)


def post(client: httpx.Client, path: Path, params: dict | None = None, **kwargs: Any) -> httpx.Response:
    return client.post("/infer", params=params, files={"file": (path.name, path.read_bytes())}, **kwargs)


def save_response(response: httpx.Response, path: Path) -> Path:
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def nifti_voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


# ---- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def translator(tiny_model: Path) -> Translator:
    return Translator.from_file(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve_tmp")


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_root: Path) -> Iterator[tuple[str, Any]]:
    """One model, a token, a 1 MB upload limit and room for 20 concurrent requests."""
    app = create_app([tiny_model], device="cpu", token=TOKEN, max_upload_mb=1, queue_size=32, tmp_dir=tmp_root)
    with serve(app) as url:
        yield url, app


@pytest.fixture
def client(server: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=60) as c:
        yield c


def check_normal_request(client: httpx.Client, translator: Translator, folder: Path) -> None:
    """A good request answered with exactly the API's translation."""
    vol = volume(folder / "normal", "normal.nii.gz", seed=7)
    got = save_response(post(client, vol), folder / "normal_out.nii.gz")
    np.testing.assert_array_equal(nifti_voxels(got), nifti_voxels(expected_output(translator, vol, folder / "exp")))


# ---- tests -----------------------------------------------------------------------------------------------------


def test_model_name_rules(tmp_path: Path) -> None:
    assert model_name(tmp_path / "t1t2" / "model.pt") == "t1t2"
    assert model_name(tmp_path / "weights" / "brain_t1t2.pt") == "brain_t1t2"
    assert model_name(tmp_path / "t1t2") == "t1t2"


def test_health_and_models(server: tuple[str, Any], client: httpx.Client, translator: Translator) -> None:
    url, _ = server
    health = httpx.get(f"{url}/health")  # open without the token
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["queue"]["capacity"] == 33
    assert httpx.get(f"{url}/models").status_code == 401
    models = client.get("/models").json()["models"]
    assert len(models) == 1
    entry = models[0]
    assert entry["name"] == "tiny_model0"  # model.pt is named after its run folder
    assert entry["domains"] == ["t1", "t2"] and entry["directions"] == translator.directions
    assert set(entry["axes"]) == {"axial", "coronal", "sagittal", "all"}
    assert entry["fuse"] == ["mean", "median", "detail"]
    assert ".nii.gz" in entry["suffixes"] and ".nrrd" in entry["suffixes"] and ".mha" in entry["suffixes"]
    assert entry["config"]["generator"] == "resnet6" and "/" not in entry["config"]["source"]


def test_estimate_before_sending(server: tuple[str, Any], client: httpx.Client, translator: Translator) -> None:
    from medsynth.client import remote_estimate

    answer = client.get("/estimate", params={"shape": "64x64x20", "axis": "axial"})
    assert answer.status_code == 200 and answer.json()["shape"] == [64, 64, 20]
    seconds = answer.json()["seconds"]
    assert seconds > 0
    assert client.get("/estimate", params={"shape": "64x64x40"}).json()["seconds"] == pytest.approx(2 * seconds, rel=0.05)
    assert client.get("/estimate", params={"shape": "64x64x20", "axis": "all"}).json()["seconds"] > 2 * seconds
    assert client.get("/estimate", params={"shape": "big"}).status_code == 422
    assert httpx.get(f"{server[0]}/estimate", params={"shape": "8x8x8"}).status_code == 401
    assert remote_estimate(server[0], (64, 64, 20), token=TOKEN) == pytest.approx(seconds, rel=0.05)
    with pytest.raises(InputError, match="401"):
        remote_estimate(server[0], (64, 64, 20))


def test_oblique_nifti_round_trip_equals_convert(
    client: httpx.Client, translator: Translator, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    affine = oblique_affine()
    src = write_nifti(tmp_path / "oblique.nii.gz", head_phantom((18, 16, 10), seed=3), affine, 1, 2)
    params = {"direction": "t2-to-t1", "axis": "coronal"}
    logged = r"POST /infer\?direction=t2-to-t1&axis=coronal 200 in=\d+B out=\d+B \d+\.\d+s"
    with caplog.at_level("INFO", logger="medsynth.server"):
        response = post(client, src, params)
        # the line is written once the answer has gone out, which can be just after the client has it
        wait_until(lambda: any(re.match(logged, r.getMessage()) for r in caplog.records), timeout=5)
    got = nib.load(str(save_response(response, tmp_path / "answer.nii.gz")))
    assert 'filename="oblique_translated.nii.gz"' in response.headers["content-disposition"]
    assert got.shape == (18, 16, 10)
    np.testing.assert_allclose(got.affine, affine, atol=1e-4)
    np.testing.assert_allclose(got.get_qform(), affine, atol=1e-4)
    assert int(got.header["qform_code"]) == 1 and int(got.header["sform_code"]) == 2
    # the same voxels as medsynth-convert on the same file (its main, run in-process)
    cli_out = tmp_path / "cli.nii.gz"
    assert convert_main([str(src), str(cli_out), "--model", str(tiny_model), "--device", "cpu", "--progress",
                         "none", "--direction", "t2-to-t1", "--axis", "coronal"]) == 0
    np.testing.assert_array_equal(np.asarray(got.dataobj), nifti_voxels(cli_out))
    assert not np.array_equal(np.asarray(got.dataobj), nib.load(str(src)).get_fdata())  # it did translate


@pytest.mark.parametrize("suffix,fuse", [(".nrrd", "mean"), (".mha", "detail")])
def test_itk_round_trip(client: httpx.Client, translator: Translator, tmp_path: Path, suffix: str, fuse: str) -> None:
    src = write_itk(tmp_path / f"scan{suffix}", head_phantom((10, 14, 12), seed=5).transpose(2, 1, 0).copy())
    params = {"axis": "all"} if fuse == "mean" else {"axis": "all", "fuse": fuse}  # mean: the server's default
    got = sitk.ReadImage(str(save_response(post(client, src, params), tmp_path / f"answer{suffix}")))
    ref = sitk.ReadImage(str(src))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)
    expected = sitk.ReadImage(str(expected_output(translator, src, tmp_path / "exp", axis="all", fuse=fuse)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(expected))
    assert post(client, src, {"axis": "all", "fuse": "max"}).status_code == 422


def test_answer_format_on_request(client: httpx.Client, translator: Translator, tmp_path: Path) -> None:
    src = write_nifti(tmp_path / "scan.nii.gz", head_phantom((12, 14, 10), seed=8), oblique_affine())
    response = post(client, src, {"format": "mha"})
    assert 'filename="scan_translated.mha"' in response.headers["content-disposition"]
    got = sitk.ReadImage(str(save_response(response, tmp_path / "answer.mha")))
    want = nib.load(str(expected_output(translator, src, tmp_path / "e")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got).transpose(2, 1, 0), np.asarray(want.dataobj))
    np.testing.assert_allclose(itk_affine(got), want.affine, atol=1e-4)
    assert post(client, src, {"format": "png"}).status_code == 422


def _multipart_chunks(name: str, data: bytes, boundary: str = "b0undary") -> Iterator[bytes]:
    """A multipart body sent chunked (no Content-Length), so the limit must be enforced while streaming."""
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]
    yield f"\r\n--{boundary}--\r\n".encode()


def _truncated_gz(folder: Path) -> tuple[str, bytes]:
    data = volume(folder, "whole.nii.gz", seed=1).read_bytes()
    return "cut.nii.gz", data[: len(data) // 2]


def _garbage_gz() -> tuple[str, bytes]:
    return "noise.nii.gz", gzip.compress(os.urandom(3000))


def _upload(name: str, data: bytes) -> Callable[[httpx.Client, Path], httpx.Response]:
    return lambda c, d: c.post("/infer", files={"file": (name, data)})


def _zip_of(members: dict[str, bytes]) -> bytes:
    """A zip holding ``members`` under exactly the given names (zipfile keeps '..' and leading '/' as written)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _good_volume(params: dict | None = None, **kwargs: Any) -> Callable[[httpx.Client, Path], httpx.Response]:
    return lambda c, d: post(c, volume(d, "v.nii.gz"), params, **kwargs)


CHUNKED = {"Content-Type": "multipart/form-data; boundary=b0undary"}
Send = Callable[[httpx.Client, Path], httpx.Response]
BAD_REQUESTS: dict[str, tuple[Send, int, str]] = {
    "text file": (_upload("notes.txt", b"hello"), 400, "notes.txt: not a supported"),
    "no suffix": (_upload("volume", b"hello"), 400, "not a supported image"),
    "random bytes .nii": (_upload("noise.nii", os.urandom(2000)), 400, "noise.nii:"),
    "corrupt gz": (lambda c, d: c.post("/infer", files={"file": _truncated_gz(d)}), 400, "cut.nii.gz:"),
    "gz of noise": (_upload(*_garbage_gz()), 400, "noise.nii.gz:"),
    "garbage nrrd": (_upload("x.nrrd", b"NRRD0004\nsizes: a b\n\n"), 400, "x.nrrd:"),
    "zip: not a zip": (_upload("series.zip", os.urandom(3000)), 400, "series.zip: not a readable zip archive"),
    "zip: truncated": (_upload("cut.zip", _zip_of({"a.dcm": os.urandom(5000)})[:-40]), 400,
                       "cut.zip: not a readable zip archive"),
    "zip: '..' member": (_upload("s.zip", _zip_of({"ok.dcm": b"x", "../../escape.dcm": b"y"})), 400,
                         "s.zip: unsafe path '../../escape.dcm'"),
    "zip: absolute member": (_upload("s.zip", _zip_of({"/tmp/escape.dcm": b"y"})), 400, "unsafe path '/tmp/escape"),
    "zip: backslash '..'": (_upload("s.zip", _zip_of({"a\\..\\..\\escape.dcm": b"y"})), 400, "unsafe path"),
    "zip: drive letter": (_upload("s.zip", _zip_of({"C:/escape.dcm": b"y"})), 400, "unsafe path 'C:/escape"),
    "zip: bomb": (_upload("bomb.zip", _zip_of({"zeros.dcm": bytes(9 << 20)})), 413,
                  "bomb.zip: unpacks to more than the server's limit of 8 MB"),
    "zip: empty": (_upload("empty.zip", _zip_of({"__MACOSX/._a.dcm": b"x"})), 400, "empty.zip: the zip holds no files"),
    "zip: not DICOM": (_upload("notes.zip", _zip_of({"notes.txt": b"hello"})), 400, "notes.zip"),
    "empty file": (_upload("empty.nii", b""), 400, "empty file"),
    "unknown model": (_good_volume({"model": "nope"}), 404, "unknown model 'nope'"),
    "unknown direction": (_good_volume({"direction": "ct-to-mr"}), 422, "unknown direction"),
    "unknown axis": (_good_volume({"axis": "oblique"}), 422, "axial"),
    "too large (declared)": (_upload("big.nii", os.urandom(2_500_000)), 413, "limit of 1 MB"),
    "too large (streamed)": (
        lambda c, d: c.post("/infer", content=_multipart_chunks("big.nii", os.urandom(1_500_000)), headers=CHUNKED),
        413, "limit of 1 MB"),
    "missing file field": (
        lambda c, d: c.post("/infer", files={"other": ("v.nii", b"x")}, data={"a": "b"}), 422, "missing form field"),
    "no body": (lambda c, d: c.post("/infer"), 422, "multipart/form-data"),
    "two files": (
        lambda c, d: c.post("/infer", files=[("file", ("a.nii", b"x")), ("file", ("b.nii", b"y"))]), 422, "one volume"),
    "no token": (_good_volume(headers={"Authorization": ""}), 401, "bearer token"),
    "wrong token": (_good_volume(headers={"Authorization": "Bearer guess"}), 401, "bearer token"),
    "wrong scheme": (_good_volume(headers={"Authorization": f"Basic {TOKEN}"}), 401, "bearer token"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_then_normal_request(
    case: str, client: httpx.Client, translator: Translator, tmp_root: Path, tmp_path: Path
) -> None:
    send, status, message = BAD_REQUESTS[case]
    response = send(client, tmp_path)
    assert response.status_code == status, response.text
    assert message in str(response.json()["detail"])
    assert str(tmp_root) not in response.text and "input.nii" not in response.text  # no server paths leak
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if case.startswith("zip"):  # nothing of a refused zip lands outside the request folder
        for folder in (tmp_root, tmp_root.parent, tmp_root.parent.parent):
            assert not list(folder.rglob("escape*"))
    check_normal_request(client, translator, tmp_path)
    assert_tmp_empty(tmp_root)


@pytest.mark.parametrize("name", ["../../../escape.nii.gz", "/tmp/escape.nii.gz", 'es"cape\u00e9 1.nii.gz'])
def test_client_file_name_is_never_a_path(
    name: str, client: httpx.Client, translator: Translator, tmp_root: Path, tmp_path: Path
) -> None:
    src = volume(tmp_path, "v.nii.gz", seed=11)
    response = client.post("/infer", files={"file": (name, src.read_bytes())})
    got = save_response(response, tmp_path / "answer.nii.gz")
    np.testing.assert_array_equal(nifti_voxels(got), nifti_voxels(expected_output(translator, src, tmp_path / "e")))
    disposition = response.headers["content-disposition"]
    pattern = r'attachment; filename="(escape|es[A-Za-z0-9_.-]*cape[A-Za-z0-9_.-]*)_translated\.nii\.gz"'
    assert re.fullmatch(pattern, disposition), disposition
    for folder in (tmp_root.parent, tmp_root.parent.parent, Path("/tmp")):
        assert not list(folder.glob("escape*"))
    assert_tmp_empty(tmp_root)


def test_twenty_concurrent_clients_each_get_their_own_answer(
    server: tuple[str, Any], translator: Translator, tmp_root: Path, tmp_path: Path
) -> None:
    url, app = server
    shapes = [(12 + 2 * (i % 4), 16, 6 + 2 * (i % 3)) for i in range(20)]
    inputs = [volume(tmp_path / "in", f"case{i:02d}.nii.gz", seed=100 + i, shape=shapes[i]) for i in range(20)]
    expected = [nifti_voxels(expected_output(translator, p, tmp_path / "exp")) for p in inputs]
    barrier = threading.Barrier(20)

    def one(i: int) -> np.ndarray:
        with httpx.Client(base_url=url, headers=AUTH, timeout=120) as c:
            barrier.wait()
            answer = save_response(post(c, inputs[i]), tmp_path / f"answer{i:02d}.nii.gz")
            return nifti_voxels(answer)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    for i, (got, want) in enumerate(zip(answers, expected)):
        assert got.shape == shapes[i]
        np.testing.assert_array_equal(got, want, err_msg=f"request {i} got another request's answer")
    assert app.state.gpu_queue.stats()["running"] == 0 and app.state.gpu_queue.stats()["waiting"] == 0
    assert_tmp_empty(tmp_root)


def test_full_queue_answers_503_then_recovers(tiny_model: Path, translator: Translator, tmp_path: Path) -> None:
    root = tmp_path / "srv"
    app = create_app({"tiny": tiny_model}, device="cpu", queue_size=1, workers=1, tmp_dir=root)
    first, second, third = (volume(tmp_path / "in", f"v{i}.nii.gz", seed=20 + i) for i in range(3))
    gate = threading.Event()
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(1) as pool:
        try:
            # Hold the only worker with a job on the real queue that waits for the test, so that what the queue
            # holds next is decided by the test and not by how fast this machine translates.
            blocker = app.state.gpu_queue.try_submit(gate.wait, 60)
            wait_until(lambda: client.get("/health").json()["queue"]["running"] == 1)
            queued = pool.submit(post, client, first)  # no token needed: this server has none
            wait_until(lambda: client.get("/health").json()["queue"]["waiting"] == 1)
            refused = post(client, second)
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) >= 1 and "queue full" in refused.json()["detail"]
        finally:
            gate.set()
        blocker.result(timeout=30)
        for src, response in ((first, queued.result(timeout=60)), (third, post(client, third))):
            got = save_response(response, tmp_path / f"out_{src.name}")
            want = expected_output(translator, src, tmp_path / "e")
            np.testing.assert_array_equal(nifti_voxels(got), nifti_voxels(want))
        assert_tmp_empty(root)


def test_no_token_two_models(tiny_model: Path, identity_model: Path, tmp_path: Path) -> None:
    app = create_app({"tiny": tiny_model, "ident": identity_model}, device="cpu", tmp_dir=tmp_path / "srv")
    src = volume(tmp_path / "in", "v.nii.gz", seed=4)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["tiny", "ident"]
        ambiguous = post(client, src)
        assert ambiguous.status_code == 422 and "several models" in ambiguous.json()["detail"]
        got = save_response(post(client, src, {"model": "ident", "direction": "T1-to-T2"}), tmp_path / "o.nii.gz")
    identity = Translator.from_file(identity_model, device="cpu")
    want = expected_output(identity, src, tmp_path / "e", direction="t1-to-t2")
    np.testing.assert_array_equal(nifti_voxels(got), nifti_voxels(want))


def test_remote_translate(server: tuple[str, Any], translator: Translator, tmp_path: Path) -> None:
    url, _ = server
    src = write_itk(tmp_path / "scan.nrrd", head_phantom((8, 12, 10), seed=9).transpose(2, 1, 0).copy())
    out = remote_translate(url, src, tmp_path / "scan_t2.nrrd", direction="t1-to-t2", axis="sagittal", token=TOKEN)
    want = expected_output(translator, src, tmp_path / "e", direction="t1-to-t2", axis="sagittal")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(want))))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["scan.nrrd", "scan_t2.nrrd"]  # no .part
    with pytest.raises(InputError, match="server answered 401: missing or wrong bearer token"):
        remote_translate(url, src, tmp_path / "a.nrrd", token="guess")
    with pytest.raises(InputError, match="server answered 404: unknown model 'nope'"):
        remote_translate(url, src, tmp_path / "a.nrrd", model="nope", token=TOKEN)
    with pytest.raises(InputError, match="axis: Input should be"):
        remote_translate(url, src, tmp_path / "a.nrrd", axis="diagonal", token=TOKEN)
    # urllib sends "Connection: close": the server must read the unread body before answering, or the client
    # sees a reset instead of the answer
    big = tmp_path / "big.nii"
    big.write_bytes(os.urandom(3_000_000))
    with pytest.raises(InputError, match="server answered 413: upload larger than the server's limit of 1 MB"):
        remote_translate(url, big, tmp_path / "a.nii", token=TOKEN)
    with pytest.raises(InputError, match="server answered 401"):
        remote_translate(url, big, tmp_path / "a.nii")
    with pytest.raises(InputError, match="must end in .nrrd"):
        remote_translate(url, src, tmp_path / "a.nii.gz", token=TOKEN)
    assert not (tmp_path / "a.nrrd").exists()
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(InputError, match="cannot reach the server"):
        remote_translate(dead, src, tmp_path / "a.nrrd")


def test_calibration_can_be_turned_off_per_request(identity_model: Path, make_volume, tmp_path: Path) -> None:
    from medsynth.calibration import calibrate_model

    t1 = [make_volume(tmp_path / "site", f"s{i}_t1.nii.gz", seed=i, contrast="t1") for i in (1, 2)]
    t2 = [make_volume(tmp_path / "site", f"s{i}_t2.nii.gz", seed=i, contrast="t2") for i in (1, 2)]
    calibrated = calibrate_model(identity_model, t1, t2, tmp_path / "cal.pt", "t1-to-t2", device="cpu")
    src = make_volume(tmp_path / "in", "head.nii.gz", seed=5, contrast="t1")
    app = create_app([calibrated], device="cpu", tmp_dir=tmp_path / "srv")
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/models").json()["models"][0]["config"]["calibrated"] == ["t1-to-t2"]
        on = save_response(post(client, src, {"direction": "t1-to-t2"}), tmp_path / "on.nii.gz")
        off = remote_translate(url, src, tmp_path / "off.nii.gz", direction="t1-to-t2", calibration=False)
    with_curve = Translator.from_file(calibrated, device="cpu")
    plain = Translator.from_file(identity_model, device="cpu")
    np.testing.assert_array_equal(nifti_voxels(on), nifti_voxels(expected_output(with_curve, src, tmp_path / "e1",
                                                                                 direction="t1-to-t2")))
    np.testing.assert_array_equal(nifti_voxels(off), nifti_voxels(expected_output(plain, src, tmp_path / "e2",
                                                                                  direction="t1-to-t2")))
    # the curve changes the answer, so the two checks above tell the requests apart
    assert np.abs(nifti_voxels(on) - nifti_voxels(off)).max() > 1.0


def test_bias_field_can_be_removed_per_request(n4_model: Path, make_volume, tmp_path: Path) -> None:
    """A model trained on N4-corrected volumes answers with the input's field put back by default, and without it
    for ``bias_field=remove`` (the client's ``bias_field``), each as the Python API gives it."""
    src = make_volume(tmp_path / "in", "head.nii.gz", seed=5, contrast="t1")
    app = create_app([n4_model], device="cpu", tmp_dir=tmp_path / "srv")
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        kept = save_response(post(client, src, {"direction": "t1-to-t2"}), tmp_path / "kept.nii.gz")
        flat = remote_translate(url, src, tmp_path / "flat.nii.gz", direction="t1-to-t2", bias_field="remove")
        assert post(client, src, {"bias_field": "keep"}).status_code == 422
    translator = Translator.from_file(n4_model, device="cpu")
    for got, option in ((kept, "restore"), (flat, "remove")):
        want = expected_output(translator, src, tmp_path / option, direction="t1-to-t2", bias_field=option)
        # N4's multithreaded fit may sum in another order from one run to the next
        np.testing.assert_allclose(nifti_voxels(got), nifti_voxels(want), rtol=1e-4, atol=1e-2)
    assert np.abs(nifti_voxels(kept) - nifti_voxels(flat)).max() > 1.0


def test_main_rejects_bad_model_paths(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.pt"
    assert main(["--model", str(missing), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file"
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("hello")
    assert main(["--model", str(not_a_model), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {not_a_model}: not a medsynth model") and "Traceback" not in err
    assert main(["--model", str(tmp_path), "--port", "0"]) == 2
    assert "has no model.pt" in capsys.readouterr().err


def test_command_line_server(tiny_model: Path, tmp_path: Path) -> None:
    """``python -m medsynth serve`` as a user starts it: token from a file, one log line per request; uploads that
    are aborted give one line each and no traceback; a stalled one is dropped after ``--idle-timeout``."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    src = volume(tmp_path, "v.nii.gz", seed=2)
    args = ["--model", f"brain={tiny_model}", "--token-file", str(token_file), "--device", "cpu", "--threads", "1",
            "--idle-timeout", "2"]
    with command_line_server(args) as (url, lines):
        assert any("upload idle timeout 2 s" in line for line in lines), lines  # stated at start-up
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            assert client.get("/models").json()["models"][0]["name"] == "brain"
            assert post(client, src, {"model": "brain"}).status_code == 200
            assert post(client, src, headers={"Authorization": "Bearer no"}).status_code == 401
        aborted = []
        for reset in (False, True):
            sock = _partial_upload(url, sent=5000)
            aborted.append(sock.getsockname()[1])
            time.sleep(0.5)  # the server has read what was sent
            if reset:  # an abrupt end (RST) as well as a polite one (FIN)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        stalled = _partial_upload(url, sent=3000)
        stalled_port = stalled.getsockname()[1]
        assert _read_until_closed(stalled, deadline=time.monotonic() + 10).startswith(b"HTTP/1.1 408")
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:  # still serving
            assert post(client, src).status_code == 200
            wait_until(lambda: any(re.search(r"POST /infer 200 ", line) for line in lines), timeout=10)
    text = "".join(lines)
    assert re.search(r"POST /infer\?model=brain 200 in=\d+B out=\d+B \d+\.\d+s", text), text
    assert re.search(r"POST /infer 401 in=\d+B out=\d+B", text), text
    assert TOKEN not in text
    assert "Traceback" not in text and "Exception" not in text and "POST /infer 500" not in text, text
    for port in aborted:
        mine = [line for line in lines if f"127.0.0.1:{port} " in line]
        assert len(mine) == 1, text
        assert re.search(rf"upload from 127\.0\.0\.1:{port} aborted after 5000 of 200000 bytes", mine[0]), mine
    mine = [line for line in lines if f"127.0.0.1:{stalled_port} " in line]
    assert len(mine) == 1 and re.search(r"idle for 2 s after 3000 of 200000 bytes: answered 408", mine[0]), text


def _health_ok(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# ---- stalled and aborted uploads -------------------------------------------------------------------------------


def _partial_upload(url: str, sent: int = 1000, total: int = 200_000, token: str | None = TOKEN) -> socket.socket:
    """Open ``POST /infer`` on a raw socket: headers declaring ``total`` body bytes, then only ``sent`` of them."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="v.nii"\r\n\r\n'
    lines = ["POST /infer HTTP/1.1", f"Host: {host}:{port}", "Content-Type: multipart/form-data; boundary=b0undary",
             f"Content-Length: {total}"] + ([f"Authorization: Bearer {token}"] if token else [])
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + head + bytes(sent - len(head)))
    return sock


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open at ``deadline``."""
    data = b""
    with sock:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"the server still holds a stalled upload; it sent {data[:80]!r}") from None
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


def test_stalled_uploads_are_dropped_after_the_idle_timeout(
    tiny_model: Path, translator: Translator, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    app = create_app([tiny_model], device="cpu", token=TOKEN, max_upload_mb=1, queue_size=2, tmp_dir=root,
                     idle_timeout=1)
    src = volume(tmp_path / "in", "v.nii.gz", seed=31)
    want = nifti_voxels(expected_output(translator, src, tmp_path / "e"))
    with serve(app) as url:
        start = time.monotonic()
        # 8 reach the route and stall in its body read; 2 without the token are refused unread and stall in the
        # drain of their body; more stalled uploads than the queue has places
        stalled = [_partial_upload(url, sent=1000 + 500 * i) for i in range(8)]
        stalled += [_partial_upload(url, token=None) for _ in range(2)]
        answers = [_read_until_closed(sock, deadline=start + 8) for sock in stalled]
        elapsed = time.monotonic() - start
        for answer in answers[:8]:
            head = answer.split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 408") and b"connection: close" in head, answer
            assert b"no data received for 1 s; upload abandoned" in answer
        for answer in answers[8:]:
            assert answer.lower().startswith(b"http/1.1 401") and b"connection: close" in answer.lower(), answer
        assert 0.9 < elapsed < 8, elapsed  # waited for the timeout, not longer
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            health = client.get("/health")
            assert health.status_code == 200
            assert health.json()["queue"]["running"] == 0 and health.json()["queue"]["waiting"] == 0
            assert_tmp_empty(root)
            np.testing.assert_array_equal(nifti_voxels(save_response(post(client, src), tmp_path / "o.nii.gz")), want)

            # idle means idle: a slow client that keeps sending, for longer than the timeout in all, is served
            data = src.read_bytes()

            def slowly() -> Iterator[bytes]:
                yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="slow.nii.gz"\r\n\r\n'
                for piece in np.array_split(np.frombuffer(data, np.uint8), 4):
                    time.sleep(0.5)
                    yield piece.tobytes()
                yield b"\r\n--b0undary--\r\n"

            before = time.monotonic()
            slow = client.post("/infer", content=slowly(), headers=CHUNKED)
            assert time.monotonic() - before > 1.5
            np.testing.assert_array_equal(nifti_voxels(save_response(slow, tmp_path / "slow.nii.gz")), want)
        assert_tmp_empty(root)


@contextmanager
def command_line_server(args: list[str]) -> Iterator[tuple[str, list[str]]]:
    """``python -m medsynth serve ARGS`` in a subprocess; yields its URL and its log lines as they come (stderr and
    stdout together). Stops it with Ctrl-C and checks that it exits cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "medsynth", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("listening on" in line for line in lines) or proc.poll() is not None, timeout=60)
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", "".join(lines))
        assert found, "server did not start: " + "".join(lines)
        wait_until(lambda: _health_ok(found.group(1)), timeout=30)
        yield found.group(1), lines
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)


# ---- DICOM series as a zip -------------------------------------------------------------------------------------

DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_mr"


def _zip_folder_as(folder: Path, archive: Path, top: str, extra: dict[str, bytes] | None = None) -> Path:
    """Zip ``folder``'s files under ``top/`` (as "Compress" in a file manager does), with ``extra`` members."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{top}/{path.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def _series_uid(folder: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.skipif(not (DICOM / "siemens_t1_sag_hfdr").is_dir(), reason="shared DICOM data not available")
def test_dicom_series_zip_round_trip(tiny_model: Path, translator: Translator, tmp_path: Path) -> None:
    enhanced = DICOM / "siemens_xa30_enh_t1"
    # 8 neighbouring slices of the real series (a whole series, evenly spaced) keep the test fast
    series = tmp_path / "t1_sag"
    series.mkdir()
    for path in sorted((DICOM / "siemens_t1_sag_hfdr").iterdir())[12:20]:
        shutil.copy(path, series / path.name)
    # a top folder and macOS resource forks, as a Mac's "Compress" writes them
    archive = _zip_folder_as(series, tmp_path / "t1 sag.zip", "t1_sag", {"__MACOSX/t1_sag/._x.dcm": b"\0\5junk"})
    want_path = translator.translate_file(series, tmp_path / "want.nii.gz", direction="t1-to-t2")
    want = nifti_voxels(want_path)
    root = tmp_path / "srv"
    app = create_app([tiny_model], device="cpu", max_upload_mb=20, tmp_dir=root)
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/infer", params={"direction": "t1-to-t2"},
                               files={"file": (archive.name, archive.read_bytes())})
        got = nib.load(str(save_response(response, tmp_path / "answer.nii.gz")))
        assert 'filename="t1_sag_translated.nii.gz"' in response.headers["content-disposition"]
        np.testing.assert_array_equal(np.asarray(got.dataobj), want)
        np.testing.assert_allclose(got.affine, load_image(series).affine, atol=1e-4)  # the series' geometry
        assert got.shape == load_image(series).array.shape

        # the client zips a folder on the fly, and leaves nothing behind
        uploads = set(Path(tempfile.gettempdir()).glob("medsynth-upload-*"))
        out = remote_translate(url, series, tmp_path / "remote.nii.gz", direction="t1-to-t2")
        np.testing.assert_array_equal(nifti_voxels(out), want)
        assert set(Path(tempfile.gettempdir()).glob("medsynth-upload-*")) <= uploads
        with zipfile.ZipFile(zip_folder(series, tmp_path / "z.zip")) as zf:
            assert sorted(zf.namelist()) == sorted(p.name for p in series.iterdir())

        if enhanced.is_dir():
            # one enhanced multi-frame file, answered as NRRD on request, with its geometry
            single = _zip_folder_as(enhanced, tmp_path / "enh.zip", "enh")
            response = client.post("/infer", params={"format": "nrrd"}, files={"file": ("enh.zip", single.read_bytes())})
            assert 'filename="enh_translated.nrrd"' in response.headers["content-disposition"]
            got = sitk.ReadImage(str(save_response(response, tmp_path / "enh.nrrd")))
            ref = load_image(enhanced)
            assert got.GetSize() == ref.array.shape
            np.testing.assert_allclose(itk_affine(got), ref.affine, atol=1e-4)
            assert np.ptp(sitk.GetArrayFromImage(got)) > 0

            # two series in one zip: refused, naming both
            both = tmp_path / "both.zip"
            with zipfile.ZipFile(both, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                for folder in (series, enhanced):
                    for path in sorted(folder.iterdir()):
                        zf.write(path, f"{folder.name}/{path.name}")
            response = client.post("/infer", files={"file": ("both.zip", both.read_bytes())})
            assert response.status_code == 400, response.text
            detail = response.json()["detail"]
            assert detail.startswith("both.zip:") and "\n" not in detail
            assert _series_uid(series) in detail and _series_uid(enhanced) in detail
            assert str(root) not in detail
    assert_tmp_empty(root)
