"""Build pyfast_gan's native kernels as PyTorch C++/CUDA extensions.

One extension library per op family, pyfast_gan/_C_<family>, so each family builds
and loads on its own (a broken or missing one never hides the other). The families and
their ops are the table in pyfast_gan/_families.py, read here without importing the
package.

Sources: csrc/cpu/<op>.cpp (always) and csrc/cuda/<op>.cu (when CUDA is built).
The libraries hold only TORCH_LIBRARY registrations and are loaded with
torch.ops.load_library (no Python module init needed).

Environment switches:
  PYFAST_GAN_FORCE_CUDA=1   build CUDA kernels even if torch.cuda.is_available() is
                            False (default here: build them whenever nvcc and a CUDA
                            build of torch are present)
  PYFAST_GAN_SKIP_CUDA=1    CPU kernels only
  PYFAST_GAN_SKIP_BUILD=1   no native code at all (pure-Python install: reference
                            and Triton impls only)
  PYFAST_GAN_EXTENSIONS=a,b build only these families (the keys of FAMILIES)
  MAX_JOBS, TORCH_CUDA_ARCH_LIST   as for torch.utils.cpp_extension
"""
import glob
import os
import runpy
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

FAMILIES = runpy.run_path(os.path.join(HERE, "pyfast_gan", "_families.py"))["FAMILIES"]


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _nvidia_pip_includes():
    # The pip CUDA build of torch ships cuBLAS/cuSPARSE headers in
    # site-packages/nvidia/*/include; ATen's CUDA headers include them, and a
    # bare CUDA_HOME (nvcc only) may lack them.
    dirs = []
    for p in sys.path:
        for inc in glob.glob(os.path.join(p, "nvidia", "*", "include")):
            if os.path.isdir(inc) and inc not in dirs:
                dirs.append(inc)
    return dirs


def _extensions():
    if _flag("PYFAST_GAN_SKIP_BUILD"):
        return [], {}
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        # torch guesses CUDA_HOME from `which nvcc`; a /usr/local/bin/nvcc symlink
        # makes that /usr/local, which has no lib64/libcudart.so to link.
        for cand in ("/usr/local/cuda",):
            if os.path.exists(os.path.join(cand, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = cand
                break
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    want = os.environ.get("PYFAST_GAN_EXTENSIONS")
    families = [f.strip() for f in want.split(",")] if want else list(FAMILIES)
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f"PYFAST_GAN_EXTENSIONS: unknown family {f!r}; known: {sorted(FAMILIES)}")

    with_cuda = (
        not _flag("PYFAST_GAN_SKIP_CUDA")
        and torch.version.cuda is not None
        and CUDA_HOME is not None
    ) or _flag("PYFAST_GAN_FORCE_CUDA")
    if _flag("PYFAST_GAN_FORCE_CUDA") and (torch.version.cuda is None or CUDA_HOME is None):
        raise SystemExit("PYFAST_GAN_FORCE_CUDA=1 but torch has no CUDA build or nvcc (CUDA_HOME) is missing")
    if with_cuda and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        # No GPU to query on a build host: default to the Hopper parts the
        # project is measured on, plus a PTX fallback for newer ones.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0+PTX"

    cxx = ["-O3", "-fopenmp"]  # torch picks the C++ standard it needs (C++20 for 2.13+)
    if os.environ.get("PYFAST_GAN_NATIVE_ARCH", "0") == "1":
        cxx.append("-march=native")
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    exts = []
    for fam in families:
        ops = FAMILIES[fam]
        sources = [os.path.relpath(os.path.join(HERE, "csrc", "cpu", f"{op}.cpp"), HERE) for op in ops]
        sources = [s for s in sources if os.path.exists(os.path.join(HERE, s))]
        cu = [os.path.relpath(os.path.join(HERE, "csrc", "cuda", f"{op}.cu"), HERE) for op in ops]
        cu = [s for s in cu if os.path.exists(os.path.join(HERE, s))]
        if not sources:
            continue
        kw = dict(
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
        if with_cuda and cu:
            kw["include_dirs"] += _nvidia_pip_includes()
            kw["extra_compile_args"]["nvcc"] = nvcc
            kw["define_macros"] = [("PYFAST_GAN_WITH_CUDA", "1")]
            exts.append(CUDAExtension(f"pyfast_gan._C_{fam}", sources + cu, **kw))
        else:
            exts.append(CppExtension(f"pyfast_gan._C_{fam}", sources, **kw))
    return exts, {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["pyfast_gan", "pyfast_gan.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
