"""Kill this process half-way through writing one video's depth file (tests/flows/test_durable.py).

Imported before the CLI by the run that test starts. When ``TRACKSET_TEST_KILL_NPZ`` names
a video id, the first ``numpy.savez`` into that video's temporary depth file writes half its
bytes, then SIGKILLs its own process: what a power cut or the out-of-memory killer leaves,
a temporary file that no ``finally`` removed.
"""

from __future__ import annotations

import os

VIDEO = os.environ.get("TRACKSET_TEST_KILL_NPZ")

if VIDEO:
    import io
    import signal
    from pathlib import Path

    import numpy

    _real_savez = numpy.savez

    def _savez_then_die(file, *args, **kwargs):
        if Path(getattr(file, "name", "")).name.startswith(f".{VIDEO}.npz."):
            buffer = io.BytesIO()
            _real_savez(buffer, *args, **kwargs)
            file.write(buffer.getvalue()[: buffer.tell() // 2])
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return _real_savez(file, *args, **kwargs)

    numpy.savez = _savez_then_die
