"""One way to pass options to every script: a block of commented config values plus typed overrides.

Every entry script keeps its options in one block, one key per line with a comment (nanoGPT's idea),
either as module globals (train.py, the benches, the toy scripts)

    lr = 5e-4                    # Adam learning rate at step 0
    data_var: float | None = None  # a None default needs its type as an annotation
    ...
    globals().update(configure(config_block(globals()), doc=__doc__))

or as a dict in a main() (eval.py, sample.py, figures.py, baseline.py):

    config = configure(dict(ckpt="",   # checkpoint written by train.py
                            ...), argv, doc=__doc__)

and the command line overrides it:   python train.py --lr=1e-3 --base_width=32 --groups=None
(`--key value` and, for a bool, a bare `--key` work too). Unlike nanoGPT's configurator nothing is
exec'd: an unknown key, a value of the wrong type or a choice outside a Literal is a one-line error
naming the key and what it expects (exit status 1), and --help prints every key, its type, default
and comment. Accepted types: bool, int, float, str, `X | None`, `typing.Literal[...]` and tuples
(`--sigmas=1,4`). With CONFIGURATOR_DRY_RUN=1 in the environment a script parses its options and
exits 0 without running (tests/test_readme.py checks every command of the docs that way).
"""
import os
import re
import sys
import typing

PRIMITIVES = (bool, int, float, str, tuple)


def fail(message, prog=None):
    """Stop the script with one line on stderr, `prog: message`, and exit status 1 (no traceback)."""
    prog = prog or os.path.basename(sys.argv[0] or "script")
    raise SystemExit(f"{prog}: {message}") from None


def require(ok, message, prog=None):
    """fail(message) unless ok: the scripts' up-front checks of user input."""
    if not ok:
        fail(message, prog)


def config_block(scope):
    """The config keys of a script written as module globals: every lower-case global holding a bool,
    int, float, str or tuple, and every annotated global (a None default says its type that way)."""
    annotated = scope.get("__annotations__", {})
    return {k: v for k, v in scope.items()
            if not k.startswith("_") and k == k.lower() and (isinstance(v, PRIMITIVES) or k in annotated)}


def type_name(typ):
    if typing.get_origin(typ) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(typ))
    args = typing.get_args(typ)
    if args and type(None) in args:
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if typing.get_origin(typ) is tuple:
        return f"comma-separated {type_name(args[0]) if args else 'values'}"
    return getattr(typ, "__name__", str(typ))


def parse_value(key, text, typ):
    """text (the part after --key=) as a value of typ, or fail() naming the key and the expected type."""
    expected = f"--{key}={text}: expected {type_name(typ)}"
    args = typing.get_args(typ)
    if typing.get_origin(typ) is typing.Literal:
        for a in args:
            if str(a) == text:
                return a
        fail(f"{expected}")
    if args and type(None) in args:
        if text.lower() == "none":
            return None
        typ = next(a for a in args if a is not type(None))
    if typing.get_origin(typ) is tuple or typ is tuple:
        item = typing.get_args(typ)[0] if typing.get_args(typ) else str
        return tuple(parse_value(key, part.strip(), item) for part in text.split(",") if part.strip())
    try:
        if typ is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if typ is int:
            v = float(text)                   # 1e6 is accepted for an int, 1.5 is not
            if not v.is_integer():
                raise ValueError
            return int(v)
        if typ is float:
            return float(text)
        if typ is str:
            return text
    except (ValueError, OverflowError):
        pass
    fail(expected)


def key_types(defaults, annotations=None):
    """The type of every key: its annotation if any, else the type of its default (a tuple's items
    take the type of its first item)."""
    annotations = annotations or {}
    types = {}
    for k, v in defaults.items():
        if k in annotations:
            types[k] = annotations[k]
        elif isinstance(v, tuple):
            types[k] = tuple[type(v[0]) if v else str, ...]
        elif v is None:
            types[k] = str | None
        else:
            types[k] = type(v)
    return types


def comments(source_file, keys):
    """{key: the comment on the line that sets it} read from the script's own source (for --help)."""
    found = {}
    try:
        with open(source_file) as fh:
            lines = fh.read().splitlines()
    except (OSError, TypeError):
        return found
    for line in lines:
        m = re.match(r"\s*(\w+)\s*(?::[^=]*)?=[^#]*#\s*(.*)$", line)
        if m and m.group(1) in keys and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    return found


def help_text(doc, defaults, types, source_file):
    notes = comments(source_file, defaults)
    rows = [(f"--{k}={'None' if v is None else ','.join(map(str, v)) if isinstance(v, tuple) else v}",
             type_name(types[k]), notes.get(k, "")) for k, v in defaults.items()]
    w0 = max((len(r[0]) for r in rows), default=0)
    w1 = max((len(r[1]) for r in rows), default=0)
    body = "\n".join(f"  {a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)
    return f"{(doc or '').strip()}\n\nkeys (--key=value), type, default and meaning:\n{body}"


def split_args(argv, types):
    """[(key, text)] from --key=value, --key value and (bool keys) a bare --key."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            fail(f"argument {arg!r} is not of the form --key=value; see --help")
        key, sep, text = arg[2:].partition("=")
        if key not in types:
            close = [k for k in types if k.startswith(key[:3])][:5]
            fail(f"unknown key --{key}" + (f" (did you mean {', '.join('--' + k for k in close)}?)" if close else "")
                 + "; --help lists every key")
        if not sep:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                text, i = argv[i + 1], i + 1
            elif types[key] is bool:
                text = "true"
            else:
                fail(f"--{key} needs a value: --{key}=VALUE ({type_name(types[key])})")
        pairs.append((key, text))
        i += 1
    return pairs


def configure(defaults, argv=None, doc="", annotations=None, presets=None, source_file=None):
    """defaults (dict key -> value) overridden by the command line argv (default sys.argv[1:]).

    annotations: types of keys whose default does not say it (None, Literal, tuples); for module
    globals, pass nothing: the scope's __annotations__ are read from defaults' source when it is
    globals() (see config_block). presets: {name: {key: value}}, applied by --preset=NAME before the
    other overrides (the key `preset` must be in defaults). Returns a new dict; a bad argument stops
    the script with one line (fail). --help / -h prints doc and every key, then exits 0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if source_file is None:
        source_file = sys.modules["__main__"].__dict__.get("__file__")
        annotations = {**sys.modules["__main__"].__dict__.get("__annotations__", {}), **(annotations or {})}
    types = key_types(defaults, annotations)
    if "-h" in argv or "--help" in argv:
        print(help_text(doc, defaults, types, source_file))
        raise SystemExit(0)
    config = dict(defaults)
    pairs = split_args(argv, types)
    for key, text in sorted(pairs, key=lambda kv: kv[0] != "preset"):   # the preset first, then the rest
        config[key] = parse_value(key, text, types[key])
        if key == "preset" and config[key]:
            if not presets or config[key] not in presets:
                fail(f"unknown preset --preset={config[key]}; presets: {', '.join(presets or {}) or 'none'}")
            config.update(presets[config[key]])
    if os.environ.get("CONFIGURATOR_DRY_RUN") == "1":     # tests: check a command's options, run nothing
        print(f"dry run: {len(pairs)} options parsed")
        raise SystemExit(0)
    return config
