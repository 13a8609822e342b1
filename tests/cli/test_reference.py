"""README's CLI reference is exactly what the parser prints."""

from pathlib import Path

from openrtc.cli.reference import BEGIN, END, render_reference, splice

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_cli_reference_is_current() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    assert splice(text, render_reference()) == text, "run: python -m openrtc.cli.reference --write"
