"""
Packages the warm sandbox's zygote imports ahead but hands a run only once it imports one, as
imported after the LMS prolog (docs/decisions/0007-warm-sandbox.rst, "held packages").

sympy, networkx and chem.chemcalc (nltk) hold, once imported, the ``random`` that the LMS prolog
puts in ``sys.modules`` for the one run (a ``random2.Random`` seeded with the problem's seed, with
random2's ``Random`` and ``SystemRandom`` as its attributes): a module imported before the prolog
would hold another. So the zygote imports them after a placeholder shaped as the prolog's
(``hold``), records every place that holds the placeholder or one of its methods, takes every
module the import loaded out of ``sys.modules`` (a run that does not import them sees nothing of
them) and puts ``Finder`` first in ``sys.meta_path``. A forked run's first import of any of them
finds its own prolog's object in ``sys.modules['random']``: every recorded place gets that object
(or its method of the same name), the generators the import made are reseeded from os.urandom,
and the modules are put back. A run whose ``random`` is not the prolog's shape (code sent without
it) imports them from disk, as a fresh interpreter would.

Stdlib only, and imports nothing once the zygote has preloaded (a run's imports come here first).
"""
import gc
import importlib.machinery
import os
import sys
import types
import warnings

# The stash of a run that imported a held package without the prolog's ``random``: kept, out of
# sight, so that dropping it costs the run no deallocation of the zygote's pages.
RELEASED = []


def placeholder(random2):
    """An object shaped as the one the LMS prolog installs as ``random`` (its seed does not matter)."""
    stand_in = random2.Random(0)
    stand_in.Random = random2.Random
    stand_in.SystemRandom = random2.SystemRandom
    return stand_in


def prolog_shaped(value, random2):
    """
    True if ``value`` is what the LMS prolog installs as ``random``: exactly a ``random2.Random``
    with random2's classes as its ``Random`` and ``SystemRandom``. By exact type, so that a lazy
    proxy is never evaluated.
    """
    if type(value) is not random2.Random:
        return False
    own = vars(value)
    return own.get("Random") is random2.Random and own.get("SystemRandom") is random2.SystemRandom


class NotHeld(Exception):
    """What the held import did cannot be handed to a run as it would be imported after the prolog."""


def hold(names, prepare, log=None):
    """
    Import ``names`` (``prepare(name)``: import it, warm it up) after a placeholder of the LMS
    prolog's ``random``, then take them out of sight behind a ``Finder`` put first in
    ``sys.meta_path``. A package whose import cannot be replayed exactly (it drew from the
    placeholder, changed what other modules hold, or made something this module does not know how
    to rebind) is left out, said on ``log`` (stderr): a run imports it from disk. The ``Finder``,
    or None if nothing is held.
    """
    log = log or (lambda text: print(f"codejail zygote: {text}", file=sys.stderr))
    random2 = sys.modules.get("random2")
    if random2 is None or not names:
        return None
    stdlib_random = sys.modules.get("random")
    finder = Finder(placeholder(random2), random2)
    # The objects there were before (kept alive, so that no new object can take the id of one).
    existing = gc.get_objects()
    born = {id(value) for value in existing}
    start = _Snapshot()
    loaded, parents = {}, []
    sys.modules["random"] = finder.placeholder
    try:
        for name in names:
            before = _Snapshot()
            state = finder.placeholder.getstate()
            try:
                prepare(name)
                if finder.placeholder.getstate() != state:
                    raise NotHeld("its import drew from the prolog's random (it would shift the run's seeded sequence)")
                parents += _changes(before)
                loaded.update(before.loaded_since())
            except Exception as exc:  # NotHeld, or whatever the package raised
                before.undo()
                log(f"not holding {name}: {exc!r}")
    finally:
        if stdlib_random is None:
            del sys.modules["random"]
        else:
            sys.modules["random"] = stdlib_random
    finder.stash(loaded, parents, start)
    try:
        finder.record(born, existing)
    except NotHeld as exc:
        finder.undo()
        log(f"not holding {', '.join(names)}: {exc}")
        return None
    finally:
        existing.clear()  # whatever keeps this frame (a traceback, a frame object) must not keep them
    if not finder.modules:
        return None
    sys.meta_path.insert(0, finder)
    return finder


def _changes(before):
    """
    What one held import changed besides loading modules: ``[(parent, attribute, child)]`` for a
    module it loaded as the attribute of a module loaded before; raises NotHeld for anything else
    a run that does not import it would see (what other modules hold, the environment, sys.path,
    warnings filters other than added ones).
    """
    loaded = before.loaded_since()
    changed, parents = [], []
    for name, attributes in before.attributes.items():
        module = before.modules[name]
        now = vars(module)
        for key in set(attributes) | set(now):
            if attributes.get(key, _MISSING) is now.get(key, _MISSING):
                continue
            child = now.get(key, _MISSING)
            if key not in attributes and loaded.get(f"{name}.{key}", _MISSING) is child:
                parents.append((module, key, child))
            elif not (module is sys and key == "path" and now[key] == before.path):  # nltk: a copy
                changed.append(f"{name}.{key}")
    if changed:
        raise NotHeld(f"its import changed what loaded modules hold: {', '.join(sorted(changed))}")
    if os.environ != before.environ or sys.path != before.path:
        raise NotHeld("its import changed the environment or sys.path")
    _added_filters(before.filters)
    return parents


def _added_filters(earlier):
    """(front, back): the warnings filters added before and after ``earlier``; NotHeld if those changed."""
    filters = warnings.filters
    first = next((index for index, item in enumerate(filters) if earlier and item is earlier[0]),
                 len(filters) - len(earlier))
    if filters[first:first + len(earlier)] != earlier:
        raise NotHeld("its import removed or reordered warnings filters")
    return filters[:first], filters[first + len(earlier):]


class _Snapshot:
    """What the process-wide state looked like before one held import, to see what it changed."""

    def __init__(self):
        self.modules = dict(sys.modules)
        self.attributes = {name: dict(vars(module)) for name, module in self.modules.items()
                           if isinstance(module, types.ModuleType)}
        self.filters = list(warnings.filters)
        self.environ = dict(os.environ)
        self.path = list(sys.path)

    def loaded_since(self):
        return {name: module for name, module in sys.modules.items() if name not in self.modules}

    def undo(self):
        """Forget what the import loaded (a run will import it from disk) and what it changed."""
        for name in self.loaded_since():
            del sys.modules[name]
        for name, attributes in self.attributes.items():
            namespace = vars(self.modules[name])
            for key in set(namespace) - set(attributes):
                del namespace[key]
            namespace.update(attributes)
        warnings.filters[:] = self.filters
        warnings._filters_mutated()  # noqa: SLF001 -- as warnings.filterwarnings does


class Finder:
    """
    First in ``sys.meta_path`` of the zygote and every run it forks: holds the stash (the modules
    the held imports loaded) until a run imports one of them, then puts them back as imported
    after that run's prolog, or drops them.
    """

    def __init__(self, stand_in, random2):
        self.placeholder = stand_in
        self.random2 = random2
        self.modules = {}  # name -> module, out of sys.modules
        self.parents = []  # (parent module, attribute, child module): a held child of a module in sight
        self.front, self.back = [], []  # warnings filters the imports added, before and after the others
        self.references = []  # (kind, where, key, method name or None): each place holding the placeholder
        self.generators = []  # the generators the imports made, seeded at import: reseeded per run
        self.pending = {}  # once activated: name -> module, still to be handed to importlib

    def stash(self, loaded, parents, start):
        """Take the modules the held imports ``loaded`` out of sight, and what they added elsewhere."""
        self.modules = dict(loaded)
        self.parents = [(parent, key, child) for parent, key, child in parents if parent.__name__ not in loaded]
        self.front, self.back = _added_filters(start.filters)
        warnings.filters[:] = start.filters
        warnings._filters_mutated()  # noqa: SLF001 -- as warnings.filterwarnings does
        for name in loaded:
            del sys.modules[name]
        for parent, key, _ in self.parents:
            delattr(parent, key)

    def undo(self):
        """Nothing held: what was stashed is forgotten (a run imports it from disk)."""
        self.modules.clear()
        self.parents.clear()
        self.front.clear()
        self.back.clear()
        self.references.clear()
        self.generators.clear()

    def record(self, born, existing):
        """
        Every place that holds the placeholder or a method of it, and every generator the held
        imports made (``born``: the ids of the objects there were before, ``existing``): raises
        NotHeld for a place or generator this module cannot replay.
        """
        gc.collect()
        ours = {id(self), id(vars(self)), id(self.references), id(existing)}
        ours.update(id(frame) for frame in _frames())
        for where in _referrers(self.placeholder, ours):
            self.references.extend(_places(where, self.placeholder, None, ours))
        ours.add(id(self.references))
        random2, stdlib = self.random2, sys.modules.get("random")
        numpy_random = sys.modules.get("numpy.random")
        for value in gc.get_objects():
            if id(value) in born or value is self.placeholder:
                continue
            kind = type(value)  # by type only: isinstance would ask a lazy proxy its __class__
            if issubclass(kind, random2.SystemRandom) or (stdlib and issubclass(kind, stdlib.SystemRandom)):
                continue  # no state: reads os.urandom
            if issubclass(kind, random2.Random) or (stdlib and issubclass(kind, stdlib.Random)):
                self.generators.append(value)
            elif numpy_random is not None and kind is numpy_random.RandomState:
                self.generators.append(value)
            elif numpy_random is not None and kind is getattr(numpy_random, "Generator", None):
                raise NotHeld("the import made a numpy Generator")

    def find_spec(self, name, path=None, target=None):
        if name in self.pending:
            return importlib.machinery.ModuleSpec(name, self, origin=self.pending[name].__spec__.origin)
        if name not in self.modules or self.pending:
            return None
        run_random = sys.modules.get("random")
        if (not prolog_shaped(run_random, self.random2) or not self._found_on_disk_as_held(name, path)
                or not sys.modules.keys().isdisjoint(self.modules)):
            self._release()
            return None
        self._activate(run_random, name)
        return self.find_spec(name, path, target)

    def create_module(self, spec):
        return self.pending[spec.name]

    def exec_module(self, module):
        """The stashed module as it is (importlib has set our spec on it: its own is put back)."""
        del self.pending[module.__name__]
        module.__spec__ = self.specs.pop(module.__name__)
        if not self.pending:
            self._leave()

    def _found_on_disk_as_held(self, name, path):
        """
        True if importing ``name`` from the run's path would find the file we imported (a
        course's own copy first on its path, e.g. in python_lib.zip, is the one it must get).
        """
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path)
            if spec is not None:
                return _location(spec) == _location(self.modules[name].__spec__)
        return False

    def _activate(self, run_random, first):
        """In the run: its ``random`` wherever the placeholder was, fresh generators, the modules back."""
        for kind, where, key, method in self.references:
            value = run_random if method is None else getattr(run_random, method)
            if kind == "item":
                where[key] = value
            elif kind == "attribute":
                setattr(where, key, value)
            elif kind == "cell":
                where.cell_contents = value
            else:  # "defaults"
                defaults = list(where.__defaults__)
                defaults[key] = value
                where.__defaults__ = tuple(defaults)
        for generator in self.generators:
            generator.seed()
        self.references, self.generators, self.placeholder = [], [], None
        # Only the first goes through importlib (which sets our spec on it): the others go into
        # sys.modules as they are. Each object the run touches is a page it copies (its
        # reference count): not a thousand modules' specs for one.
        self.specs = {first: self.modules[first].__spec__}
        self.pending = {first: self.modules.pop(first)}
        sys.modules.update(self.modules)
        for parent, key, child in self.parents:
            if child is not self.pending.get(f"{parent.__name__}.{key}"):
                setattr(parent, key, child)
        warnings.filters[:0] = self.front
        warnings.filters.extend(self.back)
        warnings._filters_mutated()  # noqa: SLF001
        self.modules = {}

    def _release(self):
        """Not handed to this run: it imports them from disk, as a fresh interpreter."""
        RELEASED.append(self)
        self._leave()

    def _leave(self):
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


_MISSING = object()


def _location(spec):
    return spec.origin, list(spec.submodule_search_locations or ())


def _frames():
    frame = sys._getframe()  # noqa: SLF001 -- ours, not a run's
    while frame is not None:
        yield frame
        frame = frame.f_back


def _referrers(value, ours):
    """What refers to ``value``, but ``ours`` (ids; the list this returns is added to them)."""
    found = gc.get_referrers(value)
    ours.add(id(found))
    kept = []
    ours.add(id(kept))
    for where in found:
        if id(where) not in ours:
            kept.append(where)
    return kept


def _places(where, value, method, ours):
    """
    ``[(kind, where, key, method)]``: how to put something else in the place(s) ``where`` holds
    ``value`` (the placeholder, or its method ``method``). A bound method of the placeholder is
    followed to where it is held. Raises NotHeld for a holder of a kind it does not know.

    Plain loops only: a comprehension would keep ``where`` or ``value`` in a cell of its own, which
    the referrer scan would then find.
    """
    places = []
    kind = type(where)
    if kind is dict:
        owner = None
        for candidate in gc.get_referrers(where):
            if isinstance(candidate, type) and _refers_to(candidate, where):
                owner = candidate
        for key, item in where.items():
            if key is value:
                raise NotHeld("a dict has the prolog's random as a key")
            if item is value:
                places.append(("attribute", owner, key, method) if owner else ("item", where, key, method))
    elif kind is list:
        for index, item in enumerate(where):
            if item is value:
                places.append(("item", where, index, method))
    elif kind is types.CellType:
        places.append(("cell", where, None, method))
    elif kind is tuple:
        for owner in _referrers(where, ours):
            if type(owner) is not types.FunctionType or owner.__defaults__ is not where:
                raise NotHeld("a tuple other than a function's defaults holds the prolog's random")
            for index, item in enumerate(where):
                if item is value:
                    places.append(("defaults", owner, index, method))
    elif method is None and kind in (types.MethodType, types.BuiltinMethodType) and where.__self__ is value:
        for holder in _referrers(where, ours):
            places.extend(_places(holder, where, where.__name__, ours))
    elif kind.__dictoffset__ and _own_items(where, value):  # an instance's attributes, kept in the object
        for namespace, key in _own_items(where, value):
            places.append(("item", namespace, key, method))
    else:
        raise NotHeld(f"a {kind.__name__} holds the prolog's random")
    return places


def _refers_to(holder, value):
    for inner in gc.get_referents(holder):
        if inner is value:
            return True
    return False


def _own_items(instance, value):
    """``[(its __dict__, key)]`` for each attribute of ``instance`` that is ``value`` (a plain ``__dict__`` only)."""
    namespace = object.__getattribute__(instance, "__dict__")
    found = []
    if type(namespace) is dict:
        for key, item in namespace.items():
            if item is value:
                found.append((namespace, key))
    return found
