"""The notebook UI: the only package that imports ipywidgets (and widget-based plotly)."""
