"""CMakeLists.txt builds csrc/ (CPU-only here) into a library torch.ops.load_library loads.

The library is loaded in a subprocess: this test process may already hold the
setup.py-built libraries, and registering the same ops twice would fail.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_cpu_build_loads_and_runs(tmp_path):
    build = tmp_path / "build"
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("MAX_JOBS", "2"))
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DPYTHON_EXECUTABLE={sys.executable}", "-DPYFAST_GAN_WITH_CUDA=OFF"],
                   check=True, capture_output=True, text=True, env=env)
    proc = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lib = build / "libpyfast_gan_ops.so"
    assert lib.exists()
    script = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(lib)!r})
        ops = torch.ops.pyfast_gan
        assert ops.penalty_built_with_cuda() is False
        g = torch.randn(3, 4, 5)
        penalty, norm = ops.gradient_norm_penalty(g, 1.0, "two_sided")
        ref = torch.linalg.vector_norm(g.flatten(1), dim=1)
        torch.testing.assert_close(norm, ref)
        torch.testing.assert_close(penalty, (ref - 1) ** 2)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYFAST_GAN_NO_NATIVE="1"))
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
