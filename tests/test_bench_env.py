"""bench.environment / memory / power on this CPU machine, with faked NVML, nvidia-smi, Jetson and tegrastats."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_pynvml import CONSTANTS, FUNCTIONS, make_fake_pynvml

from promptkd_edge.bench import doctor, environment, memory, power
from promptkd_edge.utils import gpus, system


@pytest.fixture(autouse=True)
def no_nvml(monkeypatch):
    """NVML answers nothing unless a test installs a fake (a GPU machine's real NVML would, otherwise)."""
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(init_error=True))

# ------------------------------------------------------------------------------------------------ environment
SMI_OUT = ("0, GPU-8932f937-d72c-4106-c12f-20bd9faed9f6, NVIDIA H200, 570.124.06, 143771, 345, 1980, 2619, "
           "700.00, 9.0\n"
           "1, GPU-11111111-d72c-4106-c12f-20bd9faed9f6, NVIDIA H200, 570.124.06, 143771, [N/A], [N/A], [N/A], "
           "[N/A], 9.0\n")


def _no_commands(monkeypatch):
    monkeypatch.setattr(system, "which", lambda name: None)


def test_describe_on_this_machine(monkeypatch):
    _no_commands(monkeypatch)  # no nvidia-smi / nvpmodel here anyway; keeps the test independent of PATH
    start = time.perf_counter()
    env = environment.describe()
    assert time.perf_counter() - start < 2
    assert set(env) == {"cpu", "cpu_flags", "cores", "threads", "gpu", "jetson", "versions", "python", "platform"}
    assert isinstance(env["cpu"], str) and env["cpu"]
    flags = set(Path("/proc/cpuinfo").read_text().split())  # the speed flags are the CPU's own
    assert env["cpu_flags"] and set(env["cpu_flags"]) <= flags
    assert isinstance(env["cores"], int) and env["cores"] >= 1
    assert env["threads"] == torch.get_num_threads()  # torch is imported by conftest
    assert environment.describe(threads=3)["threads"] == 3
    assert env["gpu"] is None and env["jetson"] is None
    assert set(env["versions"]) == {"promptkd_edge", "torch", "onnxruntime", "tensorrt", "openvino"}
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    assert env["versions"]["promptkd_edge"] and env["versions"]["onnxruntime"] and env["versions"]["openvino"]
    assert env["versions"]["tensorrt"] is None  # not installed here
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["platform"]
    json.dumps(env)


def test_describe_imports_nothing_heavy(tmp_path):
    code = ("import sys, json; from promptkd_edge.bench import environment as e; d = e.describe(); "
            "print(json.dumps([d['versions'], d['threads'], d['cores'], "
            "[m for m in ('torch', 'onnxruntime', 'tensorrt', 'numpy') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    versions, threads, cores, imported = json.loads(out.strip().splitlines()[-1])
    assert imported == []
    assert versions["torch"] and versions["onnxruntime"]
    assert threads == cores  # without torch and without `threads`: the usable cores


def test_describe_with_fake_nvidia_smi(monkeypatch):
    calls: list[list[str]] = []

    def fake_run(cmd, timeout=system.COMMAND_TIMEOUT_S):
        calls.append(cmd)
        return 0, SMI_OUT

    monkeypatch.setattr(system, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    monkeypatch.setattr(system, "run_command", fake_run)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu = environment.describe(device="cuda")["gpu"]
    assert gpu == {"name": "NVIDIA H200", "driver": "570.124.06", "memory_gib": 140.4, "compute_capability": "9.0",
                   "clocks_mhz": {"sm": 345, "max_sm": 1980, "mem": 2619}, "power_limit_w": 700.0}
    assert calls[0][1].startswith("--query-gpu=") and "compute_cap" in calls[0][1]
    assert calls[0][2] == "--format=csv,noheader,nounits"

    second = environment.describe(device="cuda:1")["gpu"]  # [N/A] fields -> None
    assert second["clocks_mhz"] == {"sm": None, "max_sm": None, "mem": None} and second["power_limit_w"] is None
    assert second["name"] == "NVIDIA H200"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # cuda:0 of this process is nvidia-smi's GPU 1
    assert environment.describe(device="cuda")["gpu"]["power_limit_w"] is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8932f937")  # UUID prefixes work too
    assert environment.describe(device="cuda:0")["gpu"]["power_limit_w"] == 700.0
    assert environment.describe(device="cpu")["gpu"]["name"] == "NVIDIA H200"  # visible, so recorded


def test_nvidia_smi_without_compute_cap_and_failures(monkeypatch):
    def old_driver(cmd, timeout=system.COMMAND_TIMEOUT_S):
        if "compute_cap" in cmd[1]:
            return 2, 'Field "compute_cap" is not a valid field to query.\n'
        return 0, "0, GPU-1, Tesla T4, 470.82.01, 15109, 300, 1590, 405, 70.00\n"

    monkeypatch.setattr(system, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    monkeypatch.setattr(system, "run_command", old_driver)
    gpu = environment.describe(device="cuda")["gpu"]
    assert gpu["name"] == "Tesla T4" and gpu["compute_capability"] is None and gpu["power_limit_w"] == 70.0

    monkeypatch.setattr(system, "run_command", lambda cmd, timeout=0: (-1, "timed out after 2 s"))
    assert environment.describe(device="cuda")["gpu"] is None  # no torch CUDA here either

    def boom(cmd, timeout=0):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(system, "run_command", boom)
    assert environment.describe(device="cuda")["gpu"] is None  # never raises


def test_describe_with_fake_jetson(monkeypatch, tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                       "DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")

    def fake_run(cmd, timeout=system.COMMAND_TIMEOUT_S):
        if cmd[-1] == "-q":
            return 0, "NV Power Mode: MAXN_SUPER\n2\n"
        if cmd[-1] == "--show":
            return 0, "GPU MinFreq=1020000000 MaxFreq=1020000000 CurrentFreq=1020000000\n"
        # JetPack 6's nvidia-smi on Orin: most fields are not available
        return 0, "0, GPU-abc, Orin (nvgpu), 540.4.0, [N/A], [N/A], [N/A], [N/A], [N/A], [N/A]\n"

    monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", release)
    monkeypatch.setattr(doctor, "DEVICE_TREE_MODEL", model)
    monkeypatch.setattr(system, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(system, "run_command", fake_run)
    env = environment.describe(device="cuda")
    assert env["jetson"] == {"model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                             "l4t": "36.4.3", "jetpack": "6.2", "power_mode": "MAXN_SUPER", "jetson_clocks": "on"}
    assert env["gpu"]["name"] == "Orin (nvgpu)" and env["gpu"]["memory_gib"] is None
    assert env["gpu"]["clocks_mhz"]["sm"] is None

    monkeypatch.setattr(system, "which", lambda name: None)  # no nvpmodel, no jetson_clocks: unknown
    assert environment.describe()["jetson"] == {
        "model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "l4t": "36.4.3",
        "jetpack": "6.2", "power_mode": None, "jetson_clocks": None}


def test_version_read_from_source_without_import(monkeypatch, tmp_path):
    pkg = tmp_path / "fake_trt_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise ImportError("must not be imported")\n__version__ = "10.3.0"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from promptkd_edge.utils.versions import distribution_version, package_version

    assert package_version("fake_trt_pkg") == "10.3.0"
    assert "fake_trt_pkg" not in sys.modules
    assert package_version("no_such_module_pkd") is None
    assert distribution_version("numpy") == np.__version__ and distribution_version("no-such-dist-pkd") is None


class _FakeCuda:
    """torch.cuda with one initialised H200 (the real torch here is a CPU build)."""

    def __init__(self, initialized: bool = True) -> None:
        self.initialized, self.peak, self.resets, self.syncs = initialized, 0, 0, 0

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def get_device_properties(self, index: int):
        return types.SimpleNamespace(name="NVIDIA H200", total_memory=150_000_000_000, major=9, minor=0)

    def synchronize(self) -> None:
        self.syncs += 1

    def reset_peak_memory_stats(self) -> None:
        self.resets += 1
        self.peak = 0

    def max_memory_allocated(self) -> int:
        return self.peak


def _fake_torch(monkeypatch, cuda: _FakeCuda) -> None:
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, get_num_threads=lambda: 7,
                                                                    __version__="2.14.1"))


def test_gpu_from_torch_when_no_nvidia_smi(monkeypatch):
    _no_commands(monkeypatch)
    _fake_torch(monkeypatch, _FakeCuda(initialized=False))
    env = environment.describe(device="cuda:0")
    assert env["gpu"] == {"name": "NVIDIA H200", "driver": None, "memory_gib": 139.7, "compute_capability": "9.0",
                          "clocks_mhz": {"sm": None, "max_sm": None, "mem": None}, "power_limit_w": None}
    assert env["threads"] == 7 and env["versions"]["torch"] == "2.14.1"
    assert environment.describe(device="cpu")["gpu"] is None  # would initialise CUDA inside a CPU benchmark


# ------------------------------------------------------------------------------------------------------ memory
@pytest.mark.skipif(not memory.CLEAR_REFS.exists(), reason="no /proc/self/clear_refs (not Linux)")
def test_peak_rss_reset_on_this_linux():
    a = np.ones(200 * 2**20, dtype=np.uint8)  # ones, not zeros: the pages must really be touched
    del a
    high = memory.peak_rss_mib()
    assert memory.reset_peak_rss() is True
    low = memory.peak_rss_mib()
    assert high is not None and low is not None and high - low >= 150

    with memory.PeakMemory() as big:
        b = np.ones(200 * 2**20, dtype=np.uint8)
        del b
    with memory.PeakMemory() as small:  # after the free: the peak starts from what is resident now
        c = np.ones(2**20, dtype=np.uint8)
        del c
    assert big.host_reset and small.host_reset
    assert big.host_mib - small.host_mib >= 150
    assert big.host_mib - big.host_start_mib >= 150
    assert big.gpu_mib is None  # torch has not initialised CUDA (there is none)
    assert big.to_dict()["host_peak_scope"] == "section"


def test_peak_rss_fallbacks(monkeypatch, tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1024 kB\n")
    monkeypatch.setattr(memory, "PROC_STATUS", status)
    assert memory.peak_rss() == (200.0, True)

    monkeypatch.setattr(memory, "PROC_STATUS", tmp_path / "missing")  # no /proc: getrusage, cannot be reset
    mib, resettable = memory.peak_rss()
    assert mib is not None and mib > 10 and resettable is False

    monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path)  # a directory: writing fails like a permission error
    assert memory.reset_peak_rss() is False
    with memory.PeakMemory() as pm:
        pass
    assert pm.host_reset is False and pm.host_mib is not None and pm.host_start_mib is None
    assert pm.to_dict()["host_peak_scope"] == "process"


def test_peak_memory_reads_torch_cuda_peak(monkeypatch):
    cuda = _FakeCuda()
    _fake_torch(monkeypatch, cuda)
    with memory.PeakMemory() as pm:
        cuda.peak = 300 * 2**20
    assert cuda.resets == 1 and pm.gpu_mib == 300.0 and pm.to_dict()["gpu_peak_mib"] == 300.0
    cuda.initialized = False  # torch imported, CUDA never initialised: untouched, no GPU figure
    with memory.PeakMemory() as pm:
        pass
    assert cuda.resets == 1 and pm.gpu_mib is None


# ------------------------------------------------------------------------------------------------------- power
XAVIER_JP5 = ("RAM 2035/7765MB (lfb 1x4MB) SWAP 0/3883MB (cached 0MB) CPU [1%@1190,0%@1190,0%@1190,0%@1190,"
              "off,off] EMC_FREQ 0% GR3D_FREQ 0% AO@40C GPU@39.5C PMIC@50C AUX@39C CPU@41C thermal@40C "
              "POM_5V_IN 3450/3450 POM_5V_GPU 0/0 POM_5V_CPU 553/553")
ORIN_JP6 = ("11-29-2025 10:00:01 RAM 3010/62841MB (lfb 4x4MB) SWAP 0/31420MB (cached 0MB) "
            "CPU [0%@729,0%@729,1%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] "
            "VIC_FREQ 115 APE 174 cpu@44.5C soc2@41.8C tj@45.4C "
            "VDD_IN 5230mW/5230mW VDD_CPU_GPU_CV 1200mW/1200mW VDD_SOC 1500mW/1500mW")
ORIN_NANO = ("RAM 2200/7620MB (lfb 2x2MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510,0%@1510,0%@1510,"
             "0%@1510,0%@1510] GR3D_FREQ 0% cpu@47.2C soc2@45.1C VDD_IN 4700mW/4700mW "
             "VDD_CPU_GPU_CV 600mW/600mW VDD_SOC 1300mW/1300mW")
AGX_ORIN = ("RAM 4722/30536MB (lfb 2x4MB) CPU [0%@2201,0%@2201] GR3D_FREQ 99%@[1300,1300] "
            "VDD_GPU_SOC 21000mW/19000mW VDD_CPU_CV 3000mW/3000mW VIN_SYS_5V0 5000mW/5000mW NC 0mW/0mW "
            "VDDQ_VDD2_1V8AO 1000mW/1000mW NC 0mW/0mW")


def test_parse_tegrastats():
    assert power.parse_tegrastats(XAVIER_JP5) == (3.45, "POM_5V_IN")
    assert power.parse_tegrastats(ORIN_JP6) == (5.23, "VDD_IN")
    assert power.parse_tegrastats(ORIN_NANO) == (4.7, "VDD_IN")
    watts, rail = power.parse_tegrastats(AGX_ORIN)  # no input rail: the sum, NC skipped
    assert watts == pytest.approx(30.0) and rail == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO"
    assert power.parse_tegrastats("RAM 2035/7765MB (lfb 1x4MB) SWAP 0/3883MB (cached 0MB) CPU [1%@1190] "
                                  "EMC_FREQ 0% GR3D_FREQ 0% IRAM 0/252kB(lfb 252kB)") == (None, None)
    assert power.parse_tegrastats("") == (None, None)


def _fake_sampler(tmp_path: Path, lines: list[str], name: str = "tegrastats", ignore_term: bool = False) -> Path:
    """An executable that writes its pid and argv, then prints `lines` cyclically every 50 ms until stopped."""
    script = tmp_path / name
    trap = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
    script.write_text(
        f"#!{sys.executable}\nimport json, os, signal, sys, time\n{trap}"
        f"open({str(tmp_path / (name + '.pid'))!r}, 'w').write(json.dumps([os.getpid(), sys.argv[1:]]))\n"
        f"lines = {lines!r}\ni = 0\n"
        "while True:\n    print(lines[i % len(lines)], flush=True)\n    i += 1\n    time.sleep(0.05)\n")
    script.chmod(0o755)
    return script


def _started(tmp_path: Path, name: str) -> tuple[int, list[str]]:
    pid_file = tmp_path / f"{name}.pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "fake sampler did not start"
        time.sleep(0.02)
    pid, argv = json.loads(pid_file.read_text())
    return pid, argv


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for_samples(sampler: power.PowerSampler, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(sampler.readings) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_power_sampler_with_fake_tegrastats(tmp_path):
    lo = ORIN_JP6.replace("VDD_IN 5230mW/5230mW", "VDD_IN 4000mW/4000mW")
    hi = ORIN_JP6.replace("VDD_IN 5230mW/5230mW", "VDD_IN 6000mW/5000mW")
    exe = _fake_sampler(tmp_path, [lo, hi])
    which = {"tegrastats": str(exe), "nvidia-smi": "/usr/bin/nvidia-smi"}.get
    with power.PowerSampler(interval_ms=50, device="cpu", which=which) as sampler:
        _wait_for_samples(sampler, 4)
    pid, argv = _started(tmp_path, "tegrastats")
    assert argv == ["--interval", "50"]
    assert _gone(pid)
    assert sampler.samples >= 4 and set(sampler.readings) <= {4.0, 6.0}
    assert sampler.watts == pytest.approx(statistics.mean(sampler.readings)) and 4.0 <= sampler.watts <= 6.0
    assert sampler.source == "tegrastats VDD_IN" and sampler.reason is None
    assert sampler.to_dict()["source"] == "tegrastats VDD_IN"


def test_power_sampler_stops_process_on_exception(tmp_path, monkeypatch):
    exe = _fake_sampler(tmp_path, [XAVIER_JP5], ignore_term=True)  # ignores SIGTERM: needs the kill
    monkeypatch.setattr(system, "which", lambda name: str(exe) if name == "tegrastats" else None)
    with pytest.raises(RuntimeError, match="inside"), power.PowerSampler(interval_ms=50, stop_timeout_s=0.3) as s:
        _wait_for_samples(s, 1)
        raise RuntimeError("inside the timed section")
    pid, _ = _started(tmp_path, "tegrastats")
    assert _gone(pid)
    assert s.source == "tegrastats POM_5V_IN" and s.watts == pytest.approx(3.45)


def test_power_sampler_reads_the_nvml_energy_counter(monkeypatch):
    now = [100.0]
    fake = make_fake_pynvml(gpus=2, watts_for_energy=300.0, clock=lambda: now[0])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(system, "which", lambda name: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with power.PowerSampler(interval_ms=50, device="cuda:1") as sampler:
        now[0] += 2.0  # the counter rises 600 J during the block: its mean power is 600 J / the block's seconds
        time.sleep(0.2)
    assert sampler.source == "nvml energy counter" and sampler.samples == 1
    assert sampler.watts == pytest.approx(600.0 / sampler.seconds, rel=0.01)
    assert fake.state == {"inits": 1, "shutdowns": 1}

    # a CPU run on a desktop: NVML measures the GPU only, so no power figure (and NVML is not even opened)
    with power.PowerSampler(interval_ms=50, device="cpu") as cpu_run:
        pass
    assert cpu_run.watts is None and "tegrastats" in cpu_run.reason and cpu_run.samples == 0
    assert fake.state["inits"] == 1

    with power.PowerSampler(device="cuda:5") as missing:  # no such GPU: a reason, not an exception
        pass
    assert missing.watts is None and missing.reason.startswith("NVML has no GPU cuda:5")
    assert fake.state["inits"] == fake.state["shutdowns"]


def test_power_sampler_samples_nvml_power_without_an_energy_counter(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml(energy=False, power_mw=212_500))
    monkeypatch.setattr(system, "which", lambda name: None)
    with power.PowerSampler(interval_ms=20, device="cuda") as sampler:
        _wait_for_samples(sampler._source, 3)
    assert sampler.source == "nvml power samples" and sampler.samples >= 3 and sampler.watts == 212.5


def test_power_sampler_without_nvml_driver_says_why(monkeypatch):
    monkeypatch.setattr(system, "which", lambda name: None)
    with power.PowerSampler(device="cuda") as sampler:  # the autouse fake: nvmlInit raises LibraryNotFound
        pass
    assert sampler.watts is None and sampler.reason == "no tegrastats on PATH, and NVML: NVML Shared Library Not Found"


def test_the_real_pynvml_without_a_driver_is_one_clear_line(monkeypatch):
    """nvidia-ml-py is installed here, but there is no driver: nvmlInit raises, and every caller degrades."""
    import pynvml as real

    monkeypatch.setitem(sys.modules, "pynvml", real)
    with pytest.raises(real.NVMLError):
        real.nvmlInit()
    with gpus.nvml() as (module, why):
        assert module is None and why == "NVML: NVML Shared Library Not Found"
    monkeypatch.setattr(system, "which", lambda name: None)
    assert gpus.scan() == gpus.GpuScan(None, [], "nvidia-smi not on PATH")
    assert doctor.probe_nvidia_smi() == {"available": False, "reason": "nvidia-smi not on PATH"}
    with power.PowerSampler(device="cuda") as sampler:
        pass
    assert sampler.reason == "no tegrastats on PATH, and NVML: NVML Shared Library Not Found"
    with memory.PeakMemory(nvml=True) as pm:
        pass
    assert pm.gpu_process_mib is None


def test_fake_pynvml_matches_the_real_module():
    """Every NVML function the code calls exists in nvidia-ml-py with the fake's parameters; constants agree."""
    import inspect

    import pynvml as real

    fake = make_fake_pynvml()
    for name in FUNCTIONS:
        assert hasattr(real, name), name
        assert inspect.signature(getattr(fake, name)).parameters.keys() == \
            inspect.signature(getattr(real, name)).parameters.keys(), name
    for name in CONSTANTS:
        assert getattr(fake, name) == getattr(real, name)
    used = set()
    for module in (gpus, power, memory):
        used |= set(re.findall(r"pynvml\.(nvml\w+|NVML_\w+)", inspect.getsource(module)))
    assert used <= set(FUNCTIONS) | set(CONSTANTS), used - set(FUNCTIONS) - set(CONSTANTS)


def test_nvml_gpu_facts_and_process_memory(monkeypatch):
    fake = make_fake_pynvml(gpus=2, processes={os.getpid(): 3 * 2**30, 1: 2**30})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu = environment.describe(device="cuda")["gpu"]
    assert gpu == {"name": "NVIDIA H200", "driver": "570.124.06", "memory_gib": 140.4, "compute_capability": "9.0",
                   "clocks_mhz": {"sm": 345, "max_sm": 1980, "mem": 2619}, "power_limit_w": 700.0}
    assert doctor.probe_nvidia_smi()["gpus"][0] == {"name": "NVIDIA H200", "driver": "570.124.06",
                                                    "clock_sm": "345 MHz", "clock_max_sm": "1980 MHz",
                                                    "power_limit": "700.00 W"}
    with memory.PeakMemory(nvml=True) as pm:
        pass
    assert pm.gpu_process_mib == 2 * 3 * 1024  # this process's 3 GiB on each of the 2 GPUs, not pid 1's
    with memory.PeakMemory() as off:
        pass
    assert off.gpu_process_mib is None
    assert fake.state["inits"] == fake.state["shutdowns"]


def test_power_sampler_without_source(monkeypatch):
    monkeypatch.setattr(system, "which", lambda name: None)
    with power.PowerSampler() as sampler:
        pass
    assert sampler.watts is None and sampler.samples == 0 and sampler.source is None
    assert sampler.reason == "no tegrastats on PATH, and NVML: NVML Shared Library Not Found"

    def cannot_start(cmd):
        raise FileNotFoundError(2, "No such file or directory")

    sampler = power.PowerSampler(which=lambda name: "/opt/tegrastats" if name == "tegrastats" else None,
                                 popen=cannot_start)
    with sampler:
        pass
    assert sampler.watts is None and sampler.reason.startswith("cannot start /opt/tegrastats")


def test_power_sampler_process_that_exits(tmp_path, monkeypatch):
    script = tmp_path / "tegrastats"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('tegrastats: permission denied')\nsys.exit(3)\n")
    script.chmod(0o755)
    monkeypatch.setattr(system, "which", lambda name: str(script) if name == "tegrastats" else None)
    with power.PowerSampler(interval_ms=50) as sampler:
        time.sleep(0.5)
    assert sampler.watts is None and "exited with code 3" in sampler.reason and "permission denied" in sampler.reason


def test_images_per_joule():
    assert power.images_per_joule(300.0, 15.0) == pytest.approx(20.0)
    assert power.images_per_joule(300.0, None) is None
    assert power.images_per_joule(300.0, 0.0) is None
