"""The live view's screens over the main one: the help, a yes/no question, one session in full."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def compose(self) -> ComposeResult:
        yield Static(self._text, id="help")


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        yield Static(f"{self._question}\n\n[b]y[/b] yes    [b]n[/b] no", id="confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class SessionScreen(Screen[None]):
    """One session in full; follows the refreshes while open."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "back"),
        Binding("k", "app.cancel_session", "cancel session"),
        Binding("r", "app.profile", "profile"),
        Binding("q", "app.quit", "quit"),
    ]

    def __init__(self, key: str, text: Text) -> None:
        super().__init__()
        self.key = key
        self._text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._text, id="detail")
        yield Footer()

    def show(self, text: Text) -> None:
        self.query_one("#detail", Static).update(text)
