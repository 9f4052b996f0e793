"""State through the real checkpoint format (what `rigctl run --resume` reads back)."""

import tempfile
from typing import Any

from rigctl.checkpoint import read_checkpoint_file, write_checkpoint_file


def through_checkpoint(state: Any) -> Any:
    with tempfile.TemporaryDirectory() as directory:
        write_checkpoint_file(directory, {"state": state})
        return read_checkpoint_file(directory)["state"]
