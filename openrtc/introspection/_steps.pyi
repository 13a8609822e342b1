# The C step timer (_steps.c); same attributes as the pure-Python classes in timing.py.
from collections.abc import Callable
from typing import Any

class StepClock:
    current: Any
    started: float
    total_s: float
    long_steps: int
    threshold_s: float
    on_long_step: Callable[[Any, float, float], None]
    def __init__(self, threshold_s: float, on_long_step: Callable[[Any, float, float], None]) -> None: ...

class SessionStats:
    session: Any
    busy_s: float
    blocks: int
    last_block: Any
    last_block_mono: float
    cpu_ring: list[float] | None
    def __init__(self, session: Any) -> None: ...
    def busy_since(self, tick: int) -> float: ...

class TimedCoroutine:
    wrapped: Any
    stats: SessionStats
    clock: StepClock
    def __init__(self, wrapped: Any, stats: SessionStats, clock: StepClock) -> None: ...
    def send(self, value: Any) -> Any: ...
    def throw(self, typ: Any, val: Any = ..., tb: Any = ...) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> Any: ...
    cr_frame: Any
    cr_code: Any
    cr_await: Any
    cr_running: bool
    __name__: str

class TaskFactory:
    fallback: Callable[..., Any]
    def __init__(
        self,
        task_type: Any,
        var: Any,
        wrapper: type[TimedCoroutine],
        clock: StepClock,
        fallback: Callable[..., Any],
    ) -> None: ...
    def __call__(self, loop: Any, coro: Any, context: Any = ..., **kwargs: Any) -> Any: ...

def scan(
    sessions: list[Any],
    start: int,
    stop: int,
    params: tuple[int, int, float, Any, float, Any, float, float, float, float, tuple[Any, Any, Any]],
    out: tuple[list[float], set[Any], set[Any], set[Any], set[Any], dict[Any, int], list[float]],
) -> None: ...
def smallest(keys: list[float], limit: int) -> list[int]: ...
def tick(sessions: list[Any], i: int, size: int) -> None: ...
