"""Three toy stages for the pipeline tests: they write real files and log every call.

``TOY_FAIL_AT=<stage>`` makes that stage raise halfway; ``TOY_SLEEP_AT=<stage>`` makes it
sleep (so a test can kill the process mid-stage).
"""

from __future__ import annotations

import os
import time

from nanoseg.atomic import write_text


def _work(ctx, name: str) -> None:
    with open(ctx.run_dir / "calls.log", "a") as fh:
        fh.write(name + "\n")
    (ctx.out_dir / "partial.txt").write_text("started")
    if os.environ.get("TOY_SLEEP_AT") == name:
        (ctx.run_dir / f"{name}.sleeping").write_text("")
        time.sleep(60)
    if os.environ.get("TOY_FAIL_AT") == name:
        raise RuntimeError(f"toy failure in {name}")
    write_text(ctx.out_dir / "result.txt", f"{name} seed={ctx.config.seed}")
    write_text(ctx.out_dir / "sub" / "nested.txt", name)


def first(ctx):
    _work(ctx, "first")


def second(ctx):
    _work(ctx, "second")


def third(ctx):
    assert (ctx.stage_dir("masks") / "result.txt").is_file()
    _work(ctx, "third")
