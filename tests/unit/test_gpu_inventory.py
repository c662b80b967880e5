"""GPU inventory: NVML when it works (tested against a faithful fake ``pynvml``), else fake GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trackset.config.settings import ClusterSettings, FakeGpu
from trackset.errors import SettingsError
from trackset.gpu.fake_device import FakeDevice
from trackset.gpu.inventory import FakeInventory, GpuInfo, NvmlInventory, NvmlUnavailableError, detect_inventory

GIB = 1024**3


def fake_cluster(**kwargs) -> ClusterSettings:
    return ClusterSettings(fake_gpus=[FakeGpu(name="Small", memory_gb=8), FakeGpu(name="Big", memory_gb=16)], **kwargs)


# -- a fake pynvml that behaves like nvidia-ml-py 13 ---------------------------------------


class NVMLError(Exception):
    """Like pynvml.NVMLError: the NVML return code in ``value``, its description as str()."""

    value = 999
    text = "Unknown Error"

    def __str__(self) -> str:
        return self.text


class NVMLError_Uninitialized(NVMLError):  # noqa: N801 - pynvml's names
    value, text = 1, "Uninitialized"


class NVMLError_InvalidArgument(NVMLError):  # noqa: N801
    value, text = 2, "Invalid Argument"


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    value, text = 12, "NVML Shared Library Not Found"


@dataclass
class Gpu:
    name: str | bytes
    total: int
    used: int  # by everyone, as NVML counts it
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)


@dataclass
class MemoryInfo:
    """Like c_nvmlMemory_t: total, free and used in bytes."""

    total: int
    free: int
    used: int


@dataclass
class ProcessInfo:
    """Like the friendly object of nvmlDeviceGetComputeRunningProcesses (None = N/A)."""

    pid: int
    usedGpuMemory: int | None  # noqa: N815 - pynvml's name
    gpuInstanceId: int = 0xFFFFFFFF  # noqa: N815
    computeInstanceId: int = 0xFFFFFFFF  # noqa: N815


class NVMLError_Unknown(NVMLError):  # noqa: N801
    value, text = 999, "Unknown Error"


def make_pynvml(gpus: list[Gpu], *, driver: bool = True, broken: bool = False) -> types.ModuleType:
    """A ``pynvml`` module: refcounted init/shutdown, errors when used uninitialised."""
    module = types.ModuleType("pynvml")
    state = {"refcount": 0, "inits": 0}

    def check() -> None:
        if state["refcount"] == 0:
            raise NVMLError_Uninitialized()

    def nvmlInit() -> None:  # noqa: N802
        if not driver:
            # Real pynvml: CDLL("libnvidia-ml.so.1") fails -> NVMLError_LibraryNotFound.
            raise NVMLError_LibraryNotFound()
        state["refcount"] += 1
        state["inits"] += 1

    def nvmlShutdown() -> None:  # noqa: N802
        check()
        state["refcount"] -= 1

    def nvmlDeviceGetCount() -> int:  # noqa: N802
        check()
        if broken:  # e.g. a GPU fallen off the bus
            raise NVMLError_Unknown()
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> Gpu:  # noqa: N802
        check()
        if not 0 <= index < len(gpus):
            raise NVMLError_InvalidArgument()
        return gpus[index]

    def nvmlDeviceGetMemoryInfo(handle: Gpu) -> MemoryInfo:  # noqa: N802
        check()
        return MemoryInfo(total=handle.total, free=handle.total - handle.used, used=handle.used)

    def nvmlDeviceGetName(handle: Gpu) -> str | bytes:  # noqa: N802
        check()
        return handle.name

    def nvmlDeviceGetComputeRunningProcesses(handle: Gpu) -> list[ProcessInfo]:  # noqa: N802
        check()
        return [ProcessInfo(pid, used) for pid, used in handle.processes]

    for name, value in dict(locals()).items():
        if name.startswith(("nvml", "NVML")):
            setattr(module, name, value)
    module.NVMLError = NVMLError
    module.NVMLError_Uninitialized = NVMLError_Uninitialized
    module.NVMLError_InvalidArgument = NVMLError_InvalidArgument
    module.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    module.state = state
    return module


@pytest.fixture
def two_gpus(monkeypatch):
    me = os.getpid()
    gpus = [
        Gpu(b"NVIDIA A100-SXM4-40GB", total=40 * GIB, used=13 * GIB, processes=[(4242, 10 * GIB), (me, 2 * GIB)]),
        Gpu("NVIDIA H100 80GB HBM3", total=80 * GIB, used=1 * GIB, processes=[(4242, None)]),
    ]
    fake = make_pynvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


# -- NVML ----------------------------------------------------------------------------------


def test_nvml_inventory_reads_memory_names_and_others_use(two_gpus):
    with detect_inventory(fake_cluster()) as inventory:
        assert isinstance(inventory, NvmlInventory) and inventory.kind == "nvml"
        gpus = inventory.gpus()
    assert gpus == [
        # 13 GiB used, 2 of them ours: others hold 11 GiB (10 by pid 4242, 1 by the driver).
        GpuInfo(0, "NVIDIA A100-SXM4-40GB", 40 * GIB, 11 * GIB, 27 * GIB),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", 80 * GIB, 1 * GIB, 79 * GIB),
    ]
    assert gpus[0].available_bytes == 29 * GIB
    assert two_gpus.state["refcount"] == 0  # closed: NVML shut down again


def test_nvml_per_process_usage(two_gpus):
    with NvmlInventory() as inventory:
        assert inventory.process_used_bytes(0, 4242) == 10 * GIB
        assert inventory.process_used_bytes(0, os.getpid()) == 2 * GIB
        assert inventory.process_used_bytes(0, 1) is None  # not listed (e.g. other PID namespace)
        assert inventory.process_used_bytes(1, 4242) is None  # listed, but N/A
    assert two_gpus.state["refcount"] == 0


def test_nvml_stays_initialised_while_sampling(two_gpus):
    with NvmlInventory() as inventory:
        for _ in range(5):
            inventory.process_used_bytes(0, 4242)
    assert two_gpus.state["inits"] == 1


def test_nvml_close_is_idempotent_and_use_after_close_fails(two_gpus):
    inventory = NvmlInventory()
    inventory.close()
    inventory.close()
    assert two_gpus.state["refcount"] == 0
    with pytest.raises(RuntimeError, match="after close"):
        inventory.gpus()


@pytest.mark.parametrize(("gpus", "expected"), [("auto", [0, 1]), ([1], [1]), ([1, 0], [1, 0])])
def test_cluster_gpus_restricts_and_orders(two_gpus, gpus, expected):
    with detect_inventory(fake_cluster(gpus=gpus)) as inventory:
        assert [gpu.index for gpu in inventory.gpus()] == expected


def test_cluster_gpus_naming_a_missing_gpu_fails_clearly(two_gpus):
    with detect_inventory(fake_cluster(gpus=[0, 5])) as inventory:
        with pytest.raises(SettingsError, match=r"cluster.gpus: no GPU \[5\].*have: 0, 1"):
            inventory.gpus()


def test_no_driver_falls_back_to_fake(monkeypatch):
    fake = make_pynvml([], driver=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with pytest.raises(NvmlUnavailableError, match="NVML Shared Library Not Found"):
        NvmlInventory()
    inventory = detect_inventory(fake_cluster())
    assert isinstance(inventory, FakeInventory) and inventory.kind == "fake"


def test_zero_gpus_falls_back_to_fake_and_shuts_nvml_down(monkeypatch):
    fake = make_pynvml([])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert isinstance(detect_inventory(fake_cluster()), FakeInventory)
    assert fake.state == {"refcount": 0, "inits": 1}


def test_broken_driver_falls_back_to_fake_and_shuts_nvml_down(monkeypatch):
    fake = make_pynvml([], broken=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert isinstance(detect_inventory(fake_cluster()), FakeInventory)
    assert fake.state == {"refcount": 0, "inits": 1}


def test_missing_pynvml_falls_back_to_fake(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert isinstance(detect_inventory(fake_cluster()), FakeInventory)


def test_real_pynvml_imports_without_future_warning_and_detects_something():
    code = (
        "import pynvml\n"
        "from trackset.gpu.inventory import detect_inventory\n"
        "from trackset.config.settings import ClusterSettings\n"
        "print(detect_inventory(ClusterSettings()).kind)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() in {"nvml", "fake"}


# -- fake GPUs -------------------------------------------------------------------------------


def test_fake_inventory_from_settings_without_ledger(tmp_path):
    ledger = tmp_path / "work" / ".fake_gpu"
    gpus = FakeInventory(fake_cluster(), ledger).gpus()
    assert gpus == [GpuInfo(0, "Small", 8 * GIB, 0, 8 * GIB), GpuInfo(1, "Big", 16 * GIB, 0, 16 * GIB)]
    assert not ledger.exists()  # looking leaves no trace in the work dir
    assert FakeInventory(fake_cluster(), None).process_used_bytes(0, os.getpid()) is None


def test_fake_gb_are_gib():
    (gpu,) = FakeInventory(ClusterSettings(fake_gpus=[FakeGpu(memory_gb=1.5)])).gpus()
    assert gpu.total_bytes == 1610612736


@pytest.fixture
def other_process_holding(tmp_path):
    """A live process holding 3 GiB of fake GPU 1 in the ledger under ``tmp_path``."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from trackset.gpu.fake_device import FakeDevice
        FakeDevice(Path({str(tmp_path)!r}), 1, {16 * GIB}).allocate({3 * GIB})
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_fake_inventory_counts_other_processes_from_the_ledger(tmp_path, other_process_holding):
    FakeDevice(tmp_path, 1, 16 * GIB).allocate(GIB)  # ours: still available to this stage
    inventory = FakeInventory(fake_cluster(), tmp_path)
    small, big = inventory.gpus()
    assert small == GpuInfo(0, "Small", 8 * GIB, 0, 8 * GIB)
    assert big == GpuInfo(1, "Big", 16 * GIB, used_bytes=3 * GIB, free_bytes=12 * GIB)
    assert big.available_bytes == 13 * GIB
    assert inventory.process_used_bytes(1, other_process_holding) == 3 * GIB
    assert inventory.process_used_bytes(1, os.getpid()) == GIB


def test_fake_inventory_selection_and_lookup(tmp_path):
    inventory = FakeInventory(fake_cluster(), tmp_path, indices=[1])
    assert [gpu.name for gpu in inventory.gpus()] == ["Big"]
    assert inventory.gpu(0).name == "Small"  # lookup ignores the selection
    with pytest.raises(KeyError):
        inventory.gpu(7)


def test_detect_on_this_machine_honours_cluster_gpus(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml([], driver=False))
    inventory = detect_inventory(fake_cluster(gpus=[1]), Path(tmp_path))
    assert [(gpu.index, gpu.total_bytes) for gpu in inventory.gpus()] == [(1, 16 * GIB)]
