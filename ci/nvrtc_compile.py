#!/usr/bin/env python3
"""Compiles every CUDA C translation unit that `dump_kernels` wrote with NVRTC, loaded with
ctypes from the pip wheel (nvidia-cuda-nvrtc), straight to a CUBIN for one real architecture
(NVRTC assembles the PTX itself, so no ptxas is needed).

Usage: nvrtc_compile.py DIR [--arch sm_90] [--jobs N]
  DIR holds the .cu files and index.tsv (file, entry, family, headers).

Fails (exit 1) listing every translation unit that did not compile, with NVRTC's log, that
compiled with warnings, or whose CUBIN lacks its entry point. Prints one summary line.
"""

import argparse
import ctypes
import glob
import multiprocessing
import os
import sys
import sysconfig
import time

NVRTC_SUCCESS = 0


def find_one(pattern, what):
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    hits = sorted({p for root in roots for p in glob.glob(os.path.join(root, pattern), recursive=True)})
    if not hits:
        sys.exit(f"nvrtc_compile: no {what} found under {sorted(roots)} (pattern {pattern}); "
                 "is the NVRTC wheel installed in this Python's environment?")
    return hits[-1]


def locate():
    """(libnvrtc path, CUDA include dir) from the wheels of this environment."""
    lib = find_one("nvidia/**/lib/libnvrtc.so.*[0-9]", "libnvrtc.so")
    header = find_one("nvidia/**/include/cuda_fp16.h", "cuda_fp16.h (wheel nvidia-cuda-runtime)")
    return lib, os.path.dirname(header)


_lib = None


def load(lib_path):
    global _lib
    if _lib is None:
        # libnvrtc dlopens its builtins library by soname: load it first from the same folder.
        folder = os.path.dirname(lib_path)
        for b in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so.*"))):
            if ".alt." not in b:
                ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
        _lib = ctypes.CDLL(lib_path)
        _lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return _lib


def version(lib):
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def compile_one(job):
    """Returns (file, entry, ok, message)."""
    lib_path, include, arch, path, entry = job
    lib = load(lib_path)
    with open(path, "rb") as f:
        src = f.read()
    prog = ctypes.c_void_p()
    name = os.path.basename(path).encode()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, name, 0, None, None)
    if rc != NVRTC_SUCCESS:
        return path, entry, False, f"nvrtcCreateProgram: {lib.nvrtcGetErrorString(rc).decode()}"
    opts = [f"--gpu-architecture={arch}", "-default-device", "--std=c++17", f"-I{include}"]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    try:
        rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace").strip()
        if rc != NVRTC_SUCCESS:
            return path, entry, False, f"{lib.nvrtcGetErrorString(rc).decode()}\n{log}"
        if log:
            return path, entry, False, f"compiled with warnings:\n{log}"
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetCUBIN(prog, cubin)
        if size.value == 0 or entry.encode() + b"\0" not in cubin.raw:
            return path, entry, False, f"the CUBIN ({size.value} bytes) does not contain {entry}"
        return path, entry, True, ""
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    lib_path, include = locate()
    lib = load(lib_path)
    ver = version(lib)
    entries = []
    with open(os.path.join(args.dir, "index.tsv")) as f:
        for line in f:
            file, entry, _family, _headers = line.rstrip("\n").split("\t")
            entries.append((lib_path, include, args.arch, os.path.join(args.dir, file), entry))
    if not entries:
        sys.exit("nvrtc_compile: the index lists no kernels")

    print(f"nvrtc_compile: NVRTC {ver} ({lib_path}), headers from {include}, "
          f"{len(entries)} translation units, {args.jobs} processes", flush=True)
    start = time.monotonic()
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(compile_one, entries, chunksize=8)
    else:
        results = [compile_one(e) for e in entries]
    elapsed = time.monotonic() - start

    failed = [(p, e, m) for p, e, ok, m in results if not ok]
    for path, entry, msg in failed:
        print(f"--- FAILED: {entry} ({path})\n{msg}\n")
    units = len(results)
    ok_entries = units - len(failed)
    if failed:
        print(f"nvrtc_compile: {len(failed)} of {units} translation units failed for {args.arch} "
              f"with NVRTC {ver}: " + ", ".join(e for _, e, _ in failed))
        return 1
    print(f"nvrtc_compile: {units} translation units, {ok_entries} entry points compiled to "
          f"{args.arch} CUBIN with NVRTC {ver} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
