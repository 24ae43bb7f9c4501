"""Builds specdec_kernels._C: the C++ ops always, the CUDA kernels too when torch has CUDA and nvcc is found.

The .cu sources use raw pointers and a cudaStream_t only, so nvcc compiles them without torch's headers;
the torch-facing glue (op registration, stream lookup) lives in .cpp files.
"""

import glob
import os

from setuptools import find_namespace_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("SPECDEC_NO_CUDA") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    cpu_sources = ["csrc/ops.cpp", "csrc/compact_kv_cpu.cpp", "csrc/move_kv_cpu.cpp"]
    cxx_flags = ["-O3", "-std=c++17"]
    if not _want_cuda():
        print("specdec-kernels: building the C++ (CPU) ops only")
        return cpp_extension.CppExtension("specdec_kernels._C", cpu_sources, extra_compile_args={"cxx": cxx_flags})
    print("specdec-kernels: building the C++ and CUDA ops")
    cuda_sources = sorted(glob.glob("csrc/*.cu")) + ["csrc/compact_kv_cuda_glue.cpp"]
    return cpp_extension.CUDAExtension(
        "specdec_kernels._C",
        cpu_sources + cuda_sources,
        define_macros=[("SPECDEC_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
    )


def _python_api_packages() -> list[str]:
    """specdec, its subpackages and its data folders (specdec/assets/**).

    The asset folders are listed as (namespace) packages whose files are package data: that is how
    setuptools wants data in subfolders declared (a folder with an importable name that is not in
    ``packages`` draws a warning and would later be dropped)."""
    return find_namespace_packages("python_api", include=["specdec", "specdec.*"], exclude=["*.__pycache__"])


PYTHON_API_PACKAGES = _python_api_packages()

setup(
    packages=["specdec_kernels"] + PYTHON_API_PACKAGES,
    package_dir={"specdec_kernels": "specdec_kernels", "": "python_api"},
    # every file in an asset folder (model weights, tokenizers, prompt sets, trained settings)
    package_data={p: ["*"] for p in PYTHON_API_PACKAGES if p == "specdec.assets" or p.startswith("specdec.assets.")},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
