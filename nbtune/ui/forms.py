"""Widget forms generated from the config dataclasses.

A `ConfigForm` shows one row per dataclass field: a label whose tooltip is
the field's help text, an input chosen from the field's type and metadata, and
a message slot where validation errors appear next to the field they are
about. `form.config()` returns the validated config object — the very object
the Python API takes — so the form and the API cannot drift apart.

Numbers are typed into text boxes on purpose: ipywidgets' number boxes clamp or
silently coerce bad input, and the user would never learn what was wrong.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any

import ipywidgets as widgets

from nbtune.errors import ConfigError
from nbtune.viz.html import esc

IPYWIDGETS_MAJOR = int(widgets.__version__.split(".")[0])
NONE_LABEL = "(default)"


def with_tooltip(widget: Any, text: str) -> Any:
    """Set a hover tooltip in ipywidgets 8 (`tooltip`) and 7 (`description_tooltip`)."""
    if IPYWIDGETS_MAJOR >= 8:
        widget.tooltip = text
    else:  # pragma: no cover - ipywidgets 7 (Colab)
        widget.description_tooltip = text
    return widget


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(bool | int | float | str | tuple, optional?) of a resolved field annotation such as `int | None`."""
    args = typing.get_args(annotation) or (annotation,)
    optional = type(None) in args
    kind = next(a for a in args if a is not type(None))
    return typing.get_origin(kind) or kind, optional


class FieldRow:
    """One field: label (tooltip = help), input, inline message."""

    def __init__(self, field: dataclasses.Field, annotation: Any, value: Any) -> None:
        self.name = field.name
        self.meta = field.metadata
        self.kind, self.optional = _base_type(annotation)
        self.help = self.meta.get("help", "")
        self.input = self._make_input(value)
        with_tooltip(self.input, self.help)
        self.input.add_class(f"nbtune-field-{self.name}")
        label = widgets.HTML(f'<span title="{esc(self.help)}" style="cursor:help">{esc(self.name)}</span>',
                             layout=widgets.Layout(width="210px"))
        self.message = widgets.HTML("", layout=widgets.Layout(width="auto"))
        self.message.add_class("nbtune-field-error")
        self.widget = widgets.HBox([label, self.input, self.message])

    # ------------------------------------------------------------- inputs
    def _make_input(self, value: Any) -> Any:
        layout = widgets.Layout(width="220px")
        if self.kind is bool and not self.optional:
            return widgets.Checkbox(value=bool(value), indent=False, layout=layout)
        if "choices" in self.meta or self.kind is bool:  # an optional bool is a three-way choice
            options = ([NONE_LABEL] if self.optional else []) + list(self.meta.get("choices", [True, False]))
            return widgets.Dropdown(options=options, value=NONE_LABEL if value is None else value, layout=layout)
        placeholder = "None (use the default)" if self.optional else ""
        return widgets.Text(value=self._show(value), placeholder=placeholder, continuous_update=False,
                            layout=layout)

    def _show(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, (tuple, list)):
            return ", ".join(str(v) for v in value)
        return str(value)

    def set(self, value: Any) -> None:
        if isinstance(self.input, widgets.Checkbox):
            self.input.value = bool(value)
        elif isinstance(self.input, widgets.Dropdown):
            self.input.value = NONE_LABEL if value is None else value
        else:
            self.input.value = self._show(value)

    def read(self) -> Any:
        """The typed value, or a ConfigError naming this field."""
        raw = self.input.value
        if isinstance(self.input, (widgets.Checkbox,)):
            return raw
        if isinstance(self.input, widgets.Dropdown):
            return None if raw == NONE_LABEL else raw
        text = raw.strip()
        if text == "" or (self.optional and text.lower() == "none"):
            if self.optional:
                return None
            if self.kind is str:
                return ""
            raise ConfigError("a value is needed", column=self.name, fix=f"type a {self.kind.__name__}")
        return self._parse(text)

    def _parse(self, text: str) -> Any:
        try:
            if self.kind is bool:
                return {"true": True, "false": False, "yes": True, "no": False}[text.lower()]
            if self.kind is int:
                return int(text.replace(",", "").replace("_", ""))
            if self.kind is float:
                return float(text)
            if self.kind is tuple:
                return tuple(float(part) for part in text.split(",") if part.strip())
        except (ValueError, KeyError):
            example = {bool: "true or false", int: "a whole number such as 8", float: "a number such as 0.001",
                       tuple: "numbers separated by commas"}[self.kind]
            raise ConfigError(f"{text!r} is not {example.split(' such')[0]}", column=self.name,
                              fix=f"type {example}") from None
        return text

    def show_error(self, error: ConfigError) -> None:
        message = error.what + (f" — {error.fix}" if error.fix else "")
        self.message.value = f'<span style="color:#b42318">⚠ {esc(message)}</span>'

    def clear_error(self) -> None:
        self.message.value = ""


class ConfigForm:
    """A form over one config dataclass; `config()` gives the validated object or shows what is wrong."""

    def __init__(self, config_class: type, value: Any = None, *, main: Iterable[str] | None = None,
                 on_change: Callable[[], None] | None = None, title: str = "More settings") -> None:
        self.config_class = config_class
        value = value if value is not None else config_class()
        hints = typing.get_type_hints(config_class)
        self.rows = {f.name: FieldRow(f, hints[f.name], getattr(value, f.name))
                     for f in dataclasses.fields(config_class)}
        main = list(main) if main is not None else list(self.rows)
        first = [self.rows[name].widget for name in main]
        rest = [row.widget for name, row in self.rows.items() if name not in main]
        children: list[Any] = list(first)
        if rest:
            more = widgets.Accordion(children=[widgets.VBox(rest)])
            more.set_title(0, title)
            more.selected_index = None
            children.append(more)
        self.widget = widgets.VBox(children)
        self.widget.add_class(f"nbtune-form-{config_class.__name__}")
        self._on_change = on_change
        self._quiet = False
        for row in self.rows.values():
            row.input.observe(self._changed, names="value")

    def _changed(self, change: dict) -> None:
        if not self._quiet and self._on_change is not None:
            self._on_change()

    def set(self, value: Any) -> None:
        """Show `value` (a config object) without firing change callbacks."""
        self._quiet = True
        try:
            for name, row in self.rows.items():
                row.set(getattr(value, name))
                row.clear_error()
        finally:
            self._quiet = False

    def values(self) -> dict[str, Any]:
        """Typed field values; raises the first field's ConfigError after marking every bad field."""
        values, first_error = {}, None
        for name, row in self.rows.items():
            try:
                values[name] = row.read()
                row.clear_error()
            except ConfigError as exc:
                row.show_error(exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return values

    def config(self) -> Any:
        """The validated config object; a bad field gets its message inline and the ConfigError is raised."""
        values = self.values()
        try:
            return self.config_class(**values)  # configs validate themselves when constructed
        except ConfigError as exc:
            self.show_error(exc)
            raise

    def show_error(self, error: ConfigError) -> bool:
        """Put a ConfigError next to the field it names; False if it names no field of this form."""
        row = self.rows.get(error.column) if isinstance(error.column, str) else None
        if row is None:
            return False
        row.show_error(error)
        return True

    def show_defaults(self, defaults: dict[str, Any], why: str) -> None:
        """Show in empty (None) fields the values a run will really use, e.g. the model's method's defaults."""
        for name, value in defaults.items():
            row = self.rows[name]
            if isinstance(row.input, widgets.Text) and row.optional:
                row.input.placeholder = f"{value:g} ({why})" if isinstance(value, float) else f"{value} ({why})"

    def __getitem__(self, name: str) -> Any:
        """The input widget of a field (tests and panels set values through it)."""
        return self.rows[name].input

