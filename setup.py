"""Builds tonio_loop._core, the C extension, against the system libev."""

import glob
import os

from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
debug = os.environ.get("TONIO_DEBUG") == "1"

extra = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
if debug:
    extra += ["-O0", "-g3", "-UNDEBUG"]
else:
    extra += ["-O2"]
if os.environ.get("TONIO_SANITIZE"):
    extra += [f"-fsanitize={os.environ['TONIO_SANITIZE']}", "-fno-omit-frame-pointer"]

setup(
    ext_modules=[
        Extension(
            "tonio_loop._core",
            sources=sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "loop", "*.c"))),
            include_dirs=["include"],
            # without this, a changed header does not recompile the sources
            depends=sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "include", "*.h"))),
            libraries=["ev"],
            extra_compile_args=extra,
            extra_link_args=(
                [f"-fsanitize={os.environ['TONIO_SANITIZE']}"] if os.environ.get("TONIO_SANITIZE") else []
            ),
            define_macros=[("_GNU_SOURCE", "1")],
        )
    ],
)
