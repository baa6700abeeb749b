"""Compile every kernel with NVRTC, without a GPU; prints a JSON report.

Run as ``python tests/_nvrtc_compile.py MAJOR ARCH [ARCH ...]``. With MAJOR=12 the
NVRTC 12 library from the ``nvidia-cuda-nvrtc-cu12`` wheel is loaded before CuPy picks
one (CuPy would take torch's CUDA 13 NVRTC, which has dropped sm_70). The sources and
options come from the launcher (sj_parallel.backends._cuda), so this compiles exactly
what runs on a GPU.
"""

import ctypes
import json
import os
import sys


def main() -> None:
    major = int(sys.argv[1])
    archs = sys.argv[2:]
    if major == 12:
        import nvidia.cuda_nvrtc as wheel

        lib = os.path.join(list(wheel.__path__)[0], "lib", "libnvrtc.so.12")
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    from cupy_backends.cuda.libs import nvrtc

    # Bind NVRTC now: importing torch (CUDA 13 wheels) loads its own NVRTC.
    version = nvrtc.getVersion()

    from sj_parallel.backends import _cuda as C

    results = []
    variants = C.kernel_variants(representative=True)
    for arch in archs:
        for name, dtype, const, flags in variants:
            opts = (
                C.variant_options(name, dtype, const, flags)
                + C.include_options(version[0])
                + (f"--gpu-architecture=compute_{arch}",)
            )
            prog = nvrtc.createProgram(C.kernel_source(name), f"{name}.cu", [], [])
            entry = {"arch": arch, "name": name, "dtype": str(dtype), "const": const}
            entry["flags"] = [list(f) for f in flags]
            try:
                nvrtc.compileProgram(prog, list(opts))
                ptx = nvrtc.getPTX(prog)
                ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
                entry["ok"] = all(f".entry {k}" in ptx for k in C.KERNELS[name])
                entry["log"] = nvrtc.getProgramLog(prog)
                entry["mma"] = "mma.sync" in ptx
            except Exception as e:  # the log says why
                entry["ok"] = False
                entry["log"] = f"{e}: {nvrtc.getProgramLog(prog)}"
            finally:
                nvrtc.destroyProgram(prog)
            results.append(entry)
    print(json.dumps({"version": list(version), "results": results}))


if __name__ == "__main__":
    main()
