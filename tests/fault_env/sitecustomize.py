"""Test-only: on the PYTHONPATH of a child process started by a test (see
tests/fault_injection.py), injects the fault named by $SPLITLORA_FAULT as the project's
modules are imported. Never on the path of a normal run."""
import os

if os.environ.get("SPLITLORA_FAULT"):
    import importlib.util
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location(
        "_splitlora_fault_injection", Path(__file__).resolve().parents[1] / "fault_injection.py")
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    _module.install_import_hook(os.environ["SPLITLORA_FAULT"])
