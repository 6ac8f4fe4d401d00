"""Masked means masked (previews, reports, the HTML file) and settings that are not numbers are refused."""

from __future__ import annotations

import math

import pytest

import nbtune
from nbtune.config import CleanConfig, TrainConfig
from nbtune.errors import ConfigError
from nbtune.ui.forms import ConfigForm

SECRETS = ["jane.roe@example.org", "+1 415 555 0199", "203.0.113.77", "j.smith@corp.example.com"]
ROWS = [
    f"<p>Write to <b>{SECRETS[0]}</b> or call {SECRETS[1]}</p>",  # inside HTML: strip_html's example shows it too
    f"server   {SECRETS[2]} is down, ping   {SECRETS[3]}",
    "a row with nothing personal in it",
] * 3


@pytest.mark.timeout(120)
def test_no_masked_value_in_previews_reports_or_the_html_file(tmp_path):
    s = nbtune.Session(tmp_path / "s")
    s.load(ROWS)
    preview = s.preview_clean(mask_pii=True)
    applied = s.clean(mask_pii=True)
    target = s.report(tmp_path / "report.html")
    rendered = {"preview": preview._repr_html_(), "clean": applied._repr_html_(), "file": target.read_text(),
                "text": str(preview) + str(applied)}
    for where, html in rendered.items():
        for secret in SECRETS:
            assert secret not in html and secret.replace("+", "&#x2B;") not in html, (where, secret)
    # what was masked and where is shown instead of the value
    mask = next(st for st in preview.steps if st.name == "mask_pii")
    before = mask.changed_examples[0][1]
    assert "[EMAIL at char" in before and "[PHONE at char" in before
    assert "EMAIL at char" in rendered["preview"]
    assert all("<EMAIL>" in t for t in s.dataset["text"][:1])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused_everywhere(tmp_path, bad):
    with pytest.raises(ConfigError, match="finite"):
        CleanConfig(max_duplicate_line_fraction=bad)
    with pytest.raises(ConfigError, match="finite"):
        TrainConfig(learning_rate=bad)
    with pytest.raises(ConfigError, match="finite"):
        CleanConfig().replace(near_dedup_threshold=bad)
    s = nbtune.Session(tmp_path / "s")
    s.load(["one row", "two rows"])
    with pytest.raises(ConfigError):
        s.clean(max_duplicate_ngram_fraction=bad)
    assert not s.clean_applied


@pytest.mark.timeout(30)
def test_from_dict_names_the_file_and_the_unknown_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        CleanConfig.from_dict({"min_char": 5}, path=tmp_path / "recipe.json")
    assert "recipe.json" in str(err.value) and "'min_char'" in str(err.value) and "min_chars" in err.value.fix
    with pytest.raises(ConfigError, match="not a number"):
        CleanConfig.from_dict({"min_chars": "5"})
    assert CleanConfig.from_dict(CleanConfig(min_words=3).to_dict()) == CleanConfig(min_words=3)


@pytest.mark.timeout(60)
def test_a_form_shows_nan_next_to_its_field():
    form = ConfigForm(CleanConfig)
    form["max_duplicate_line_fraction"].value = "nan"
    form["min_chars"].value = "3"
    with pytest.raises(ConfigError):
        form.config()
    assert "finite" in form.rows["max_duplicate_line_fraction"].message.value
    assert form.rows["min_chars"].message.value == ""
    form["max_duplicate_line_fraction"].value = "0.5"
    assert math.isclose(form.config().max_duplicate_line_fraction, 0.5)
