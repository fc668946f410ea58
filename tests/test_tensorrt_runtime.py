"""TensorRTBackend on the behavioural fakes: asynchronous streams, per-thread current devices, profiles, buffers.

The fakes (tests/fake_tensorrt.py) queue copies and launches on their stream until it is synchronized, tag memory
and streams with the device current on the calling thread, and refuse what TensorRT and CUDA refuse; the first
tests here hold the fakes to that, the others hold the backend to numpy references on them.
"""

from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import test_tensorrt as shared
from fake_tensorrt import DEFAULT_STREAM_WARNING, _read, make_fake_cudart
from test_tensorrt import DIMS, _reference, _use, build

from promptkd_edge.errors import PkdError
from promptkd_edge.runtime import tensorrt_backend
from promptkd_edge.runtime.tensorrt_backend import TensorRTBackend

TOL = {"rtol": 1e-6, "atol": 1e-6}
_cache_env, cudart, models, trt10 = shared._cache_env, shared.cudart, shared.models, shared.trt10  # its fixtures


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *DIMS)).astype(np.float32)


def _backend(models, tmp_path, profiles, **kwargs) -> TensorRTBackend:
    rec = build(models["clip"], tmp_path, profiles=profiles)
    return TensorRTBackend(tmp_path / "bundle" / rec["file"], rec, **kwargs)


def _in_thread(fn):
    """fn() on a fresh host thread (whose CUDA current device is 0), its result or its exception."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.fixture()
def two_gpus(monkeypatch):
    """A fake CUDA runtime with GPUs 0 and 1, and the fake TensorRT 10.3 on it."""
    rt = make_fake_cudart(devices=2)
    monkeypatch.setattr(tensorrt_backend, "load_cudart", lambda: rt)
    return rt, _use(monkeypatch, "10.3.0", rt)


def _complaints(fake) -> list[tuple[str, str]]:
    return [m for m in fake.fake.log if m[0] in ("WARNING", "ERROR")]


# ------------------------------------------------------------------------------------------------ the fakes
def test_fake_copies_are_asynchronous_as_cuda_documents():
    """Pinned copies move when the stream runs; pageable ones wait for the stream ("API synchronization behavior")."""
    rt = make_fake_cudart()
    _, stream = rt.cudaStreamCreate()
    h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    dev, pinned = rt.cudaMalloc(16)[1], rt.cudaMallocHost(16)[1]
    host = (ctypes.c_uint8 * 16).from_address(pinned)
    host[:] = bytes(range(16))
    assert rt.cudaMemcpyAsync(dev, pinned, 16, h2d, stream) == (rt.cudaError_t.cudaSuccess,)
    host[:] = bytes([7] * 16)  # the DMA reads pinned memory when it runs: this is what lands
    pageable = np.zeros(16, np.uint8)
    rt.cudaMemcpyAsync(pageable.ctypes.data, dev, 16, d2h, stream)  # pageable: waits for the stream, completes
    assert pageable.tolist() == [7] * 16
    back = rt.cudaMallocHost(16)[1]
    rt.cudaMemcpyAsync(back, dev, 16, d2h, stream)
    assert ctypes.string_at(back, 16) == bytes(16)  # pinned: nothing lands before the stream is synchronized
    rt.cudaStreamSynchronize(stream)
    assert ctypes.string_at(back, 16) == bytes([7] * 16)
    source = np.arange(16, dtype=np.uint8)
    rt.cudaMemcpyAsync(dev, source.ctypes.data, 16, h2d, stream)  # pageable: staged at once
    source[:] = 0
    rt.cudaStreamSynchronize(stream)
    rt.cudaMemcpyAsync(back, dev, 16, d2h, stream)
    rt.cudaStreamSynchronize(stream)
    assert ctypes.string_at(back, 16) == bytes(range(16))
    assert [c[3] for c in rt.called("cudaMemcpyAsync")] == [True, False, True, False, True]  # pinned or not
    rt.cudaMemcpyAsync(back, dev, 16, d2h, stream)
    with pytest.raises(AssertionError, match="still uses"):  # releasing memory queued work uses: a caller's bug
        rt.cudaFreeHost(back)
    rt.cudaStreamSynchronize(stream)
    assert rt.cudaFreeHost(back) == (rt.cudaError_t.cudaSuccess,)
    assert rt.cudaMemcpyAsync(dev, pinned, 32, h2d, stream) == (rt.cudaError_t.cudaErrorInvalidValue,)  # too big
    assert dev % 256 == 0


def test_fake_current_device_is_per_host_thread():
    rt = make_fake_cudart(devices=2)
    assert rt.cudaSetDevice(2) == (rt.cudaError_t.cudaErrorInvalidDevice,)
    rt.cudaSetDevice(1)
    stream = rt.cudaStreamCreate()[1]
    assert rt.current_device() == 1 and stream.device == 1 and rt.device_of(rt.cudaMalloc(8)[1], 8) == 1
    assert _in_thread(rt.current_device) == 0  # another thread starts on device 0
    assert _in_thread(lambda: rt.device_of(rt.cudaMalloc(8)[1], 8)) == 0
    assert rt.current_device() == 1


def _context(trt, rt, tmp_path, models, profiles):
    rec = build(models["clip"], tmp_path, profiles=profiles)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine((tmp_path / "bundle" / rec["file"]).read_bytes())
    return engine, engine.create_execution_context()


def _bind(rt, ctx, batch: int, device_bytes: int | None = None) -> tuple[int, int]:
    x, y = rt.cudaMalloc(batch * 48 * 4)[1], rt.cudaMalloc(device_bytes or batch * 5 * 4)[1]
    ctx.set_tensor_address("image", x)
    ctx.set_tensor_address("logits", y)
    return x, y


def test_fake_context_refuses_what_tensorrt_refuses(trt10, cudart, models, tmp_path):
    """NvInferRuntime.h: shapes lie in the ACTIVE profile and are set after it, addresses are set before enqueueV3;
    a buffer too small faults when the kernels run (a sticky cudaErrorIllegalAddress)."""
    _, ctx = _context(trt10, cudart, tmp_path, models, [(1, 2, 4), (8, 12, 16)])
    stream = cudart.cudaStreamCreate()[1]
    assert not ctx.set_input_shape("image", (8, *DIMS))  # profile 1's shape while profile 0 is active
    assert not ctx.set_input_shape("image", (2, 3, 8, 8))  # static dimensions must agree
    assert ctx.set_input_shape("image", (2, *DIMS)) and ctx.get_tensor_shape("logits") == (2, 5)
    assert not ctx.execute_async_v3(int(stream)) and "Address is not set" in trt10.fake.log[-1][1]
    ctx.set_optimization_profile_async(1, int(stream))
    assert ctx.get_tensor_shape("logits") == (-1, 5)  # a profile switch drops the input shapes
    _bind(cudart, ctx, 8)
    assert not ctx.execute_async_v3(int(stream)) and "input shape(s) not set" in trt10.fake.log[-1][1]
    assert ctx.set_input_shape("image", (8, *DIMS)) and not ctx.set_input_shape("image", (2, *DIMS))
    assert ctx.execute_async_v3(int(stream))
    other = cudart.cudaStreamCreate()[1]
    with pytest.raises(RuntimeError, match="Error in set optimization profile async"):
        ctx.set_optimization_profile_async(0, int(other))  # work queued on `stream` is not synchronized with it
    assert cudart.cudaStreamSynchronize(stream) == (cudart.cudaError_t.cudaSuccess,)
    ctx.set_optimization_profile_async(0, int(other))
    ctx.set_input_shape("image", (4, *DIMS))
    _bind(cudart, ctx, 4, device_bytes=4 * 5 * 4 - 1)  # the output buffer is one byte short
    assert ctx.execute_async_v3(int(stream))  # enqueueV3 cannot know: the kernels fault when they run
    assert cudart.cudaStreamSynchronize(stream) == (cudart.cudaError_t.cudaErrorIllegalAddress,)
    assert cudart.cudaMalloc(4) == (cudart.cudaError_t.cudaErrorIllegalAddress, None)  # sticky


def test_fake_engine_runs_only_with_its_devices_memory(two_gpus, models, tmp_path):
    rt, trt = two_gpus
    rt.cudaSetDevice(1)
    _, ctx = _context(trt, rt, tmp_path, models, [(1, 2, 4)])
    stream = rt.cudaStreamCreate()[1]
    ctx.set_input_shape("image", (2, *DIMS))
    rt.cudaSetDevice(0)
    _bind(rt, ctx, 2)  # device 0's memory for an engine of device 1
    rt.cudaSetDevice(1)
    assert ctx.execute_async_v3(int(stream))
    assert rt.cudaStreamSynchronize(stream) == (rt.cudaError_t.cudaErrorIllegalAddress,)
    rt.sticky = None  # a fresh process
    x, y = _bind(rt, ctx, 2)
    data = _batch(2)
    ctypes.memmove(x, data.ctypes.data, data.nbytes)
    rt.cudaSetDevice(0)  # work on a non-NULL stream runs on the stream's device (cudaSetDevice's documentation)
    assert ctx.execute_async_v3(int(stream)) and rt.cudaStreamSynchronize(stream) == (rt.cudaError_t.cudaSuccess,)
    np.testing.assert_allclose(_read(y, (2, 5), np.float32), _reference(models["clip"], data), **TOL)


def test_fake_default_stream_warns_and_synchronizes(trt10, cudart, models, tmp_path):
    _, ctx = _context(trt10, cudart, tmp_path, models, [(1, 2, 4)])
    ctx.set_input_shape("image", (2, *DIMS))
    x, y = _bind(cudart, ctx, 2)
    data = _batch(2)
    ctypes.memmove(x, data.ctypes.data, data.nbytes)
    assert ctx.execute_async_v3(0) and trt10.fake.log[-1] == ("WARNING", DEFAULT_STREAM_WARNING)
    np.testing.assert_allclose(_read(y, (2, 5), np.float32), _reference(models["clip"], data), **TOL)


# ------------------------------------------------------------------------------------------------ the backend
def test_eight_threads_on_one_backend(trt10, cudart, models, tmp_path):
    """Runs from 8 threads at once, batches across two profiles and buffer sizes, each against numpy."""
    sizes = [[1, 16, 3], [5, 2, 12], [4, 8, 1], [16, 7, 2], [3, 3, 9], [11, 1, 4], [6, 14, 2], [2, 5, 16]]
    batches = {(t, i): _batch(n, seed=10 * t + i) for t, row in enumerate(sizes) for i, n in enumerate(row)}
    expected = {k: _reference(models["clip"], x) for k, x in batches.items()}
    start = threading.Barrier(8)
    with _backend(models, tmp_path, [(1, 2, 4), (5, 8, 16)]) as backend:

        def work(t: int) -> dict:
            start.wait()
            return {(t, i): backend.run(batches[t, i])["logits"] for i in range(len(sizes[t]))}

        with ThreadPoolExecutor(8) as pool:
            results = {k: v for part in pool.map(work, range(8)) for k, v in part.items()}
    for key, got in results.items():
        np.testing.assert_allclose(got, expected[key], **TOL, err_msg=str(key))
    assert not _complaints(trt10)
    assert {d for name, d in cudart.device_calls if name.startswith("cudaM")} == {0}


def test_device_1_from_a_thread_whose_current_device_is_0(two_gpus, models, tmp_path):
    """Defect 8: stage/close (and the others) used the calling thread's current device: a backend on GPU 1 used
    from a thread on GPU 0 allocated its input there and freed from there; the engine on GPU 1 then faults."""
    rt, trt = two_gpus
    backend = _backend(models, tmp_path, [(1, 2, 4), (5, 8, 16)], device_id=1)
    x, big = _batch(3, seed=5), _batch(9, seed=6)
    first = len(rt.device_calls)
    assert _in_thread(rt.current_device) == 0  # each call below runs on a fresh thread, on device 0
    shape = _in_thread(lambda: backend.stage(x))
    _in_thread(lambda: backend.run_staged(shape))
    staged = _read(backend._buffers.device["logits"][0], (3, 5), np.float32)
    np.testing.assert_allclose(staged, _reference(models["clip"], x), **TOL)
    _in_thread(lambda: backend.run_staged(shape, wait=False))
    _in_thread(backend.synchronize)
    np.testing.assert_allclose(_in_thread(lambda: backend.run(big))["logits"], _reference(models["clip"], big), **TOL)
    assert {dev for _, dev in rt.allocations.values()} == {1}
    _in_thread(backend.close)
    used = {(name, dev) for name, dev in rt.device_calls[first:] if name != "cudaSetDevice"}
    assert {dev for _, dev in used} == {1}, sorted(used)
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaFree", "cudaFreeHost", "cudaStreamDestroy"} <= {n for n, _ in used}
    assert not rt.allocations and not rt.pinned and not _complaints(trt)


def test_profiles_with_a_gap(trt10, cudart, models, tmp_path):
    """Two profiles with a gap: each batch runs in the profile that holds it, a batch in the gap is one line."""
    with _backend(models, tmp_path, [(1, 2, 4), (8, 12, 16)]) as backend:
        for n in (3, 16, 8, 1, 4, 12):
            x = _batch(n, seed=n)
            np.testing.assert_allclose(backend.run(x)["logits"], _reference(models["clip"], x), **TOL)
        switches = [c[1] for c in trt10.fake.called("set_optimization_profile_async")]
        assert switches == [1, 0, 1]
        with pytest.raises(PkdError, match=r"^batch 6 is outside the engine's profiles \[1\.\.4, 8\.\.16\]; rebuild "
                                           r"with --trt-profile$"):
            backend.run(_batch(6))
        x = _batch(2, seed=2)
        np.testing.assert_allclose(backend.run(x)["logits"], _reference(models["clip"], x), **TOL)
    assert not _complaints(trt10)


def test_a_batch_runs_in_the_profile_asked_for(trt10, cudart, models, tmp_path):
    """run(profile=i) runs a batch in profile i even where an earlier profile holds it too (as Triton may pick it);
    a profile that does not hold the batch, or does not exist, is one line."""
    with _backend(models, tmp_path, [(1, 2, 4), (1, 8, 8)]) as backend:
        x = _batch(3, seed=5)
        np.testing.assert_allclose(backend.run(x, profile=1)["logits"], _reference(models["clip"], x), **TOL)
        np.testing.assert_allclose(backend.run(x)["logits"], _reference(models["clip"], x), **TOL)
        assert [c[1] for c in trt10.fake.called("set_optimization_profile_async")] == [1, 0]
        with pytest.raises(PkdError, match=r"^batch 6 is outside the engine's profile 0 \(1\.\.4\)$"):
            backend.run(_batch(6), profile=0)
        with pytest.raises(PkdError, match=r"^the engine has no optimization profile 2 \(it has 2\)$"):
            backend.run(x, profile=2)
    assert not _complaints(trt10)


def test_buffer_growth_and_staged_runs(trt10, cudart, models, tmp_path):
    """Small, large, small batches after a staged run still queued: a grown buffer is freed only after the work
    queued on it (run_staged(wait=False) then a larger run freed the staged input under the queued launch)."""
    with _backend(models, tmp_path, [(1, 4, 16)]) as backend:
        backend.run_staged(backend.stage(_batch(1, 3)), wait=False)
        for n, seed in ((2, 0), (16, 1), (3, 2)):
            x = _batch(n, seed)
            np.testing.assert_allclose(backend.run(x)["logits"], _reference(models["clip"], x), **TOL)
        assert len(cudart.called("cudaMalloc")) == 6 and len(cudart.called("cudaFree")) == 4  # grown twice each
        x = _batch(16, 4)
        backend.run_staged(backend.stage(x), wait=False)
        backend.synchronize()
        got = _read(backend._buffers.device["logits"][0], (16, 5), np.float32)
        np.testing.assert_allclose(got, _reference(models["clip"], x), **TOL)
    assert not _complaints(trt10) and not cudart.allocations
