"""A restricted unpickler: pickles that may hold numpy arrays, dtypes and built-in containers only.

    gt_info = safe_unpickle('gt_info.pkl')        # the release's ground truth: lists of arrays
    arrays = unpickle_bytes(data, 'weights.pkl')  # nested dicts of arrays, from bytes in memory

Anything else (a function, a class, os.system, ...) is refused with a ValueError naming the file,
before it can run, and so are a few bytes that would allocate gigabytes (bytearray of a huge
integer, an empty array of a huge shape, a huge memo index or counted string): what a pickle
builds is bounded by BUILD_FACTOR x its size. Python 2 pickles (the release's) are read with
latin1 strings.
"""
import builtins
import io
import operator
import os
import pickle
import pickletools

import numpy as np

# What a pickle may build is bounded by its size: BUILD_FACTOR bytes per byte of file (at least
# BUILD_MIN in all). A released ground-truth pickle only builds what it holds (arrays come with
# their data), so this refuses nothing real, only a few bytes that claim gigabytes.
BUILD_FACTOR = 16
BUILD_MIN = 1 << 20


def _latin1_encode(text, encoding='latin1'):
    # Pickles written by Python 3 with protocol 2 store bytes as _codecs.encode(str, 'latin1').
    if encoding.lower().replace('-', '') != 'latin1':
        raise pickle.UnpicklingError(f'refused _codecs.encode with encoding {encoding!r}')
    return text.encode('latin1')


def _count_size(args, kwargs):
    """Bytes bytes(x) / bytearray(x) will allocate beyond its argument: x itself when it is an integer."""
    value = args[0] if args else kwargs.get('source')
    if value is not None and not isinstance(value, (str, bytes, bytearray, list, tuple)) \
            and hasattr(type(value), '__index__'):
        return max(operator.index(value), 0)
    return 0


def _array_bytes(shape, dtype):
    shape = (shape,) if hasattr(type(shape), '__index__') else tuple(shape)
    count = 1
    for n in shape:
        count *= max(operator.index(n), 0)   # Python integers: no overflow to a small number
    return count * np.dtype(dtype).itemsize


def _ndarray_size(args, kwargs):
    shape = args[0] if args else kwargs.get('shape', ())
    dtype = args[1] if len(args) > 1 else kwargs.get('dtype', float)
    return _array_bytes(shape, dtype)


def _reconstruct_size(args, kwargs):   # _reconstruct(subtype, shape, dtype): an empty array of that shape
    return _array_bytes(args[1], args[2]) if len(args) >= 3 else 0


def _scalar_size(args, kwargs):
    return np.dtype(args[0]).itemsize if args else 0


def _allowed_globals():
    """{(module, name): (callable, size)}: size(args, kwargs) is what a call allocates, or None."""
    allowed = {('builtins', n): (getattr(builtins, n), None)
               for n in ('list', 'dict', 'tuple', 'set', 'frozenset', 'int', 'float', 'complex', 'bool', 'str')}
    allowed.update({('builtins', n): (getattr(builtins, n), _count_size) for n in ('bytearray', 'bytes')})
    allowed.update({('__builtin__', n): f for (_, n), f in list(allowed.items())})
    allowed[('_codecs', 'encode')] = (_latin1_encode, None)
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[(module, '_reconstruct')] = (multiarray._reconstruct, _reconstruct_size)
        allowed[(module, 'scalar')] = (multiarray.scalar, _scalar_size)
    numeric = np._core.numeric if hasattr(np, '_core') else np.core.numeric
    for module in ('numpy.core.numeric', 'numpy._core.numeric'):   # arrays in pickle protocol 5
        allowed[(module, '_frombuffer')] = (numeric._frombuffer, None)   # a view of bytes in the file
    allowed[('numpy', 'ndarray')] = (np.ndarray, _ndarray_size)
    allowed[('numpy', 'dtype')] = (np.dtype, None)
    for name in dir(np.dtypes):   # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc.
        if name.endswith('DType') and name not in ('StringDType',):
            allowed[('numpy.dtypes', name)] = (getattr(np.dtypes, name), None)
    return allowed


_LENGTH_FIELDS = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}


def _check_opcodes(data):
    """Walk the opcodes of `data` (without running them); UnpicklingError for one that would make
    the C unpickler allocate what the file cannot hold: a counted string or frame (BINBYTES8,
    BYTEARRAY8, FRAME, ...) longer than the rest of the file, which it allocates before reading,
    or a memo index (LONG_BINPUT, PUT) beyond the file's length, which grows the memo to twice it."""
    pos, end = 0, len(data)
    while pos < end:
        op = pickletools.code2op.get(chr(data[pos]))
        if op is None:
            return   # the unpickler reports it
        at, pos = pos, pos + 1
        arg = op.arg
        if arg is None:
            if op.name == 'STOP':
                return
            continue
        if arg.n >= 0:
            value = int.from_bytes(data[pos:pos + arg.n], 'little')
            pos += arg.n
            if op.name == 'FRAME' and value > end - pos:
                raise pickle.UnpicklingError(f'byte {at}: FRAME of {value:,} bytes, but {end - pos:,} remain')
        elif arg.n == pickletools.UP_TO_NEWLINE:
            line_end = data.find(b'\n', pos)
            if op.name in ('GLOBAL', 'INST') and line_end >= 0:
                line_end = data.find(b'\n', line_end + 1)
            if line_end < 0:
                return
            value, pos = data[pos:line_end], line_end + 1
            if op.name in ('PUT', 'GET') and value.strip().isdigit():
                value = int(value)
        else:
            width, signed = _LENGTH_FIELDS[arg.n]
            value = int.from_bytes(data[pos:pos + width], 'little', signed=signed)
            pos += width
            if value > end - pos:
                raise pickle.UnpicklingError(f'byte {at}: {op.name} claims {value:,} bytes, but {end - pos:,} remain')
            pos += max(value, 0)
            continue
        if op.name in ('PUT', 'BINPUT', 'LONG_BINPUT') and isinstance(value, int) and value > end:
            raise pickle.UnpicklingError(f'byte {at}: {op.name} memo index {value:,} in a file of {end:,} bytes')


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the allowed globals, and all they build together within `budget` bytes."""
    allowed = None

    def __init__(self, file, budget, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = budget

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f'refused to load {module}.{name}: only numpy arrays, dtypes and built-in containers are allowed')
        function, size = found
        if size is None:
            return function

        def bounded(*args, **kwargs):
            # numpy.ndarray is both a bounded call and the class argument of _reconstruct
            args = tuple(getattr(a, 'unpickled_global', a) for a in args)
            try:
                need = size(args, kwargs)
            except (TypeError, ValueError, OverflowError):
                need = 0   # arguments the call itself will refuse
            if need > self.budget:
                raise pickle.UnpicklingError(
                    f'refused {module}.{name} of {need:,} bytes: more than this file may build '
                    f'({self.budget:,} bytes left of {BUILD_FACTOR} x its size)')
            self.budget -= need
            return function(*args, **kwargs)
        bounded.unpickled_global = function
        return bounded


def unpickle_bytes(data, source='pickle'):
    """The object pickled in `data` (bytes), under the rules of this module; ValueError naming `source`."""
    _RestrictedUnpickler.allowed = _RestrictedUnpickler.allowed or _allowed_globals()
    try:
        _check_opcodes(data)
        budget = max(BUILD_MIN, BUILD_FACTOR * len(data))
        # from memory: a file object would preallocate whatever length an opcode claims
        return _RestrictedUnpickler(io.BytesIO(data), budget, encoding='latin1').load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError) as err:
        raise ValueError(f'{source}: unsafe or unreadable pickle: {type(err).__name__}: {err}') from None


def safe_unpickle(path):
    """The object pickled in the file `path` (see unpickle_bytes); ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: file not found')
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f'{path}: cannot read: {err.strerror or err}') from None
    return unpickle_bytes(data, path)
