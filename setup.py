"""Builds tonio_loop._core, the C extension, with libev compiled in."""

import glob
import os

from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
debug = os.environ.get("TONIO_DEBUG") == "1"

extra = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
if os.environ.get("TONIO_SYSTEM_LIBEV") != "1":
    # libev's own warnings are libev's business, as with a system libev
    extra += ["-isystem", os.path.join(here, "vendor", "libev")]
if debug:
    extra += ["-O0", "-g3", "-UNDEBUG"]
else:
    extra += ["-O2"]
if os.environ.get("TONIO_SANITIZE"):
    extra += [f"-fsanitize={os.environ['TONIO_SANITIZE']}", "-fno-omit-frame-pointer"]


def asyncio_base_sizes():
    """The sizes of asyncio's own Future and Task objects in the interpreter
    we build for: tonio_loop's Future and Task are subclasses of them and put
    their own fields right after (include/tl_future.h); the module checks the
    running interpreter's sizes again at import."""
    import _asyncio

    return [
        ("TL_ASYNCIO_FUTURE_SIZE", str(_asyncio.Future.__basicsize__)),
        ("TL_ASYNCIO_TASK_SIZE", str(_asyncio.Task.__basicsize__)),
    ]


# libev is compiled in from vendor/libev (loop/libev.c, include/tl_ev.h);
# TONIO_SYSTEM_LIBEV=1 links the system's libev instead (its headers needed).
system_libev = os.environ.get("TONIO_SYSTEM_LIBEV") == "1"

setup(
    ext_modules=[
        Extension(
            "tonio_loop._core",
            sources=sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "loop", "*.c"))),
            include_dirs=["include"],
            # without this, a changed header does not recompile the sources
            depends=sorted(
                os.path.relpath(p, here)
                for pattern in ("include/*.h", "vendor/libev/*.[ch]")
                for p in glob.glob(os.path.join(here, pattern))
            ),
            libraries=["ev"] if system_libev else [],
            extra_compile_args=extra,
            extra_link_args=(
                [f"-fsanitize={os.environ['TONIO_SANITIZE']}"] if os.environ.get("TONIO_SANITIZE") else []
            ),
            define_macros=[("_GNU_SOURCE", "1")] + asyncio_base_sizes()
            + ([("TONIO_SYSTEM_LIBEV", "1")] if system_libev else []),
        )
    ],
)
