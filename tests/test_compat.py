"""``harness/_compat.py`` only acts where a CUDA torchvision meets a CPU torch (these build machines); wherever
torch and torchvision match it is a no-op (issue 18): nothing declared in torch's ``torchvision`` namespace."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PROBE = ("import torch, harness._compat as c; print(c._LIBRARY is not None, c.install(), "
         "hasattr(torch.ops.torchvision, 'nms'))")


def run(code: str, path: list[str]) -> str:
    env_path = ":".join([*path, str(ROOT)])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_on_this_machine_the_cuda_torchvision_meets_a_cpu_torch_and_the_shim_acts():
    assert run(PROBE, []) == ["True", "True", "True"]


def test_a_cpu_torchvision_with_a_cpu_torch_is_left_alone(tmp_path):
    fake = tmp_path / "torchvision"  # a CPU build's version file (no '+cu' label), found before the real one
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "version.py").write_text("__version__ = '0.28.0+cpu'\n")
    assert run(PROBE, [str(tmp_path)]) == ["False", "False", "False"]


def test_a_cuda_torch_is_left_alone():
    code = "import torch; torch.version.cuda = '13.0'; " + PROBE
    assert run(code, []) == ["False", "False", "False"]
