"""Only the C step timer lives here; everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "openrtc.introspection._steps",
            ["openrtc/introspection/_steps.c"],
            # Without a C compiler the package still installs and times steps in pure Python
            # (several times the cost per step); the worker logs a warning when that happens.
            optional=True,
        )
    ]
)
