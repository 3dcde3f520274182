# pytier: Python runs this file at start-up because its directory is on
# PYTHONPATH. It starts the pytier interposer, then runs the sitecustomize the
# program would have run without pytier. Whatever goes wrong, the program runs.
try:
    import pytier._boot

    pytier._boot.start()
except BaseException as error:  # noqa: BLE001 - never take the program down
    try:
        import sys

        sys.stderr.write(f"pytier: not active: {error!r}\n")
    except BaseException:
        pass


def _chain_next_sitecustomize():
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _chain_next_sitecustomize()
finally:
    del _chain_next_sitecustomize
