"""Build hook for the optional native forwarding path (media/_fastpath.c).

Everything else about the package is in pyproject.toml. The extension is optional: without
a C compiler the install still succeeds and media/fastpath.py uses the Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "media._fastpath",
            ["media/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
