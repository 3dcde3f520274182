# pytier: Python runs this file at start-up because its directory is on
# PYTHONPATH. It starts the pytier interposer, then runs the sitecustomize the
# program would have run without pytier. Whatever goes wrong, the program runs.
def _pin_this_version():
    # The node agent installs shim versions side by side and points a
    # `current` link at one; it may repoint it while this process starts. The
    # entry that found this file is replaced by the directory it resolves to
    # now, so the pytier package and its native library come from one version.
    import os
    import sys

    entry = os.path.dirname(os.path.abspath(__file__))
    real = os.path.dirname(os.path.realpath(__file__))
    if real != entry:
        sys.path[:] = [real if os.path.abspath(p or ".") == entry else p for p in sys.path]


try:
    _pin_this_version()
    import pytier._boot

    pytier._boot.start()
except BaseException as error:  # noqa: BLE001 - never take the program down
    try:
        import sys

        sys.stderr.write(f"pytier: not active: {error!r}\n")
    except BaseException:
        pass


def _chain_next_sitecustomize():
    # Found with the import system's own path finders, not importlib: every
    # module imported here stays for the program's life, and a full
    # gc.collect() traverses its objects.
    import os
    import sys

    for entry in sys.path:
        # Never another pytier shim (this one, or another version of it).
        if os.path.exists(os.path.join(entry or ".", "pytier", "_boot.py")):
            continue
        finder = sys.path_importer_cache.get(entry)
        if finder is None:
            for hook in sys.path_hooks:
                try:
                    finder = hook(entry)
                    break
                except ImportError:
                    continue
        spec = finder.find_spec("sitecustomize") if hasattr(finder, "find_spec") else None
        if spec is not None and spec.loader is not None:
            module = type(sys)(spec.name)
            module.__spec__, module.__loader__, module.__file__ = spec, spec.loader, spec.origin
            sys.modules["sitecustomize"] = module
            spec.loader.exec_module(module)
            return


try:
    _chain_next_sitecustomize()
finally:
    del _chain_next_sitecustomize, _pin_this_version
