"""Sphinx configuration of the course book (built by ``make book`` = ``python docs/build_book.py``).

The notebooks arrive already executed (build_book.py runs them, two at a time, and turns widgets into
pictures of their first state), so myst-nb only renders them: ``nb_execution_mode = "off"``.
"""
project = "mrcnn_lite: Mask R-CNN from scratch"
author = "the mrcnn_lite authors"
copyright = "the mrcnn_lite authors, MIT licence"

extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
root_doc = "index"

# myst-nb: render, never execute; show every output as the kernel wrote it.
nb_execution_mode = "off"
nb_output_stderr = "show"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = "Mask R-CNN from scratch"
html_theme_options = {
    "use_download_button": True,     # the executed .ipynb of each page
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
# Everything the pages need is in the build folder: no fonts, scripts or widget managers from a CDN.
html_copy_source = True
html_show_sourcelink = False

# Math without a network: MathJax 2 from the `jupyter-server-mathjax` package (the book extra), which
# build_book.py copies into _static/mathjax. Without that package the pages load MathJax from its CDN.
from pathlib import Path as _Path

if (_Path(__file__).parent / "_static" / "mathjax" / "MathJax.js").is_file():
    html_static_path = ["_static"]
    mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
    mathjax2_config = {"tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                                   "processRefs": False, "processEnvironments": False},
                       # the package ships the STIX-Web fonts only (as the classic Jupyter notebook uses them)
                       "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None}}
    myst_update_mathjax = False  # its MathJax 3 settings (window.MathJax = {...}) would confuse MathJax 2

