"""Sphinx configuration of the API reference (`bash scripts/build_docs.sh`): autodoc over the public
modules, built with warnings as errors, so a broken reference or a public name without a docstring
fails the build."""
import inspect

project = "mqnet-fast"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_default_options = {"undoc-members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures' annotations; the docstrings say what each argument is
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
suppress_warnings = ["ref.python"]  # a type named in a docstring need not have a page of its own


def _plain_text(app, what, name, obj, options, lines):
    """The docstrings are plain text with math like |x_i - x_c|: bars are literal, not substitutions."""
    lines[:] = [line.replace("|", "\\|") for line in lines]


def _missing_docstring(app, what, name, obj, options, lines):
    """A documented public function or class needs a docstring of its own."""
    short = name.rsplit(".", 1)[-1]
    if what in ("function", "class", "method") and not short.startswith("_") and not lines:
        if what == "method" and short in ("forward",):
            return
        from sphinx.util import logging

        logging.getLogger(__name__).warning(f"{name}: public {what} without a docstring", type="mqnet", subtype="doc")


def setup(app):
    app.connect("autodoc-process-docstring", _missing_docstring)
    app.connect("autodoc-process-docstring", _plain_text)
