"""capxai's optional dependencies: which extra of ``pip install capxai[...]`` brings each, and the one error that says
so when a feature needs one that is absent. pyproject.toml's [project.optional-dependencies] lists the same extras
(tests/test_packaging.py checks that the two agree and that no module imports these packages at its top level)."""
import importlib

EXTRAS = {
    "transformers": "hf",  # the Hugging Face captioners (capxai.models.hf, hf_local)
    "pycocoevalcap": "eval",  # caption metrics (capxai.evaluate.metrics), training's validation CIDEr, SCST
    "matplotlib": "report",  # figures (capxai.report)
}


class MissingExtra(ModuleNotFoundError):
    """A feature needs an optional package that is not installed; the message names the extra that installs it."""


def require(module: str, purpose: str):
    """Imports and returns ``module`` (a package of ``EXTRAS`` or one of its submodules); when the package is not
    installed, raises :class:`MissingExtra` saying that ``purpose`` needs it and how to install it. A package that is
    installed but fails to import (one of its own dependencies missing) raises its own error."""
    package = module.split(".")[0]
    extra = EXTRAS[package]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != package:
            raise
        raise MissingExtra(f"{purpose} needs {package}, which is not installed: pip install 'capxai[{extra}]'",
                           name=package) from None
