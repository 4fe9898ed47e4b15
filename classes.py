"""Class lists: a dataset's action classes in order, and the ids its result files carry.

A ClassList is the ordered class names and one integer id per class. THUMOS14's is
thumos14.THUMOS14_CLASSES (ids 7, 9, 12, ... of the official kit). Any other dataset's comes from
its annotation JSON's labels (from_labels): ordered by the file's `label_id` where it gives one
consistent id per label, else by name, with ids 1..K in that order.

A result file of such a dataset carries those ids; its class list is written beside it
(path_beside: `result.txt` -> `result.classes.txt`), one `id name` line per class, the format of
the kit's detclasslist.txt, so an evaluation can report each class by name. A checkpoint
records its classes as as_dict's {'names': [...], 'ids': [...]}; check_same refuses data, a
predictions file or a second stream whose classes differ, in one line naming both.

Imports nothing of this project but fileio: every module may use it.
"""
import os
from typing import NamedTuple

from fileio import atomic_open


class ClassList(NamedTuple):
    names: tuple   # class names, in class order
    ids: tuple     # the id of each class in result files

    def id_of_name(self):
        return dict(zip(self.names, self.ids))

    def name_of_id(self):
        return dict(zip(self.ids, self.names))


def from_labels(labels, label_ids=None):
    """The ClassList of an annotation file's labels (one entry per instance; repeats allowed).

    label_ids (one per instance, None where the file has none): when every instance has one and
    they pair each label with one id and each id with one label, the classes are in id order;
    else in name order. Ids 1..K in class order."""
    labels = [str(label) for label in labels]
    names = sorted(set(labels))
    if label_ids is not None and len(label_ids) == len(labels) and all(i is not None for i in label_ids):
        pairs = set(zip(labels, label_ids))
        if len(pairs) == len(names) == len({i for _, i in pairs}):
            try:
                names = [name for _, name in sorted((i, name) for name, i in pairs)]
            except TypeError:   # ids that do not order (mixed types): name order
                pass
    return ClassList(tuple(names), tuple(range(1, len(names) + 1)))


def as_dict(class_list):
    """The plain {'names': [...], 'ids': [...]} a checkpoint stores (torch.load weights_only reads it)."""
    return {'names': list(class_list.names), 'ids': [int(i) for i in class_list.ids]}


def from_dict(values, where):
    """as_dict's output -> ClassList; anything else is a ValueError naming `where`."""
    names, ids = (values.get(key) if isinstance(values, dict) else None for key in ('names', 'ids'))
    if (not isinstance(names, (list, tuple)) or not isinstance(ids, (list, tuple)) or not names
            or len(names) != len(ids) or not all(isinstance(n, str) for n in names)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            or len(set(names)) != len(names) or len(set(ids)) != len(ids)):
        raise ValueError(f'{where}: classes must be {{"names": [distinct names], "ids": [distinct integers]}} '
                         f'of equal length, got {values!r:.200}')
    return ClassList(tuple(names), tuple(ids))


def brief(class_list, shown=4):
    """'5 classes (a, b, c, d, e)', the middle left out of a long list: for one-line messages."""
    names = list(class_list.names)
    if len(names) > shown + 1:
        names = names[:shown - 1] + ['...', names[-1]]
    return f'{len(class_list.names)} classes ({", ".join(names)})'


def check_same(expected, got, expected_from, got_from):
    """ValueError (one line naming both class lists) unless `got` has the classes of `expected`,
    in the same order with the same ids: a model's score k means its k-th class."""
    if tuple(expected.names) != tuple(got.names):
        raise ValueError(f'{got_from} has {brief(got)}, but {expected_from} has {brief(expected)}: '
                         f'the classes must be the same, in the same order')
    if tuple(expected.ids) != tuple(got.ids):
        raise ValueError(f'{got_from} gives its {len(got.ids)} classes the ids {brief_ids(got)}, but '
                         f'{expected_from} gives them {brief_ids(expected)}')


def brief_ids(class_list, shown=4):
    ids = [str(i) for i in class_list.ids]
    return ', '.join(ids if len(ids) <= shown + 1 else ids[:shown - 1] + ['...', ids[-1]])


def path_beside(result_path):
    """Where the class list of a result file lives: `<result without extension>.classes.txt`."""
    return os.path.splitext(str(result_path))[0] + '.classes.txt'


def write_beside(path, class_list, implied):
    """The class list of the file `path` beside it (path_beside); none for the `implied` classes,
    which a missing list means (a stale list is removed)."""
    beside = path_beside(path)
    if tuple(class_list) != tuple(implied):
        write_class_list(beside, class_list)
    elif os.path.lexists(beside):
        try:
            os.remove(beside)
        except OSError as err:
            raise ValueError(f'cannot remove the stale class list {beside}: {err.strerror or err}') from None


def read_beside(path, implied):
    """The classes of the file `path`: the class list beside it, else `implied`."""
    beside = path_beside(path)
    return read_class_list(beside) if os.path.isfile(beside) else implied


def write_class_list(path, class_list):
    """One `id name` line per class, in class order (atomically)."""
    with atomic_open(path, 'w') as f:
        f.write(''.join(f'{cid} {name}\n' for cid, name in zip(class_list.ids, class_list.names)))


def read_class_list(path):
    """A file of `id name` lines (the name may hold spaces) -> ClassList; a bad line, a repeated id
    or name is a ValueError naming the file and line."""
    names, ids = [], []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or not parts[0].lstrip('-').isdigit():
                raise ValueError(f'{path}:{number}: expected "<integer id> <class name>", got {line.strip()!r}')
            cid, name = int(parts[0]), parts[1].strip()
            if cid in ids or name in names:
                raise ValueError(f'{path}:{number}: class {cid} {name!r} repeats an id or a name of an earlier line')
            ids.append(cid)
            names.append(name)
    if not names:
        raise ValueError(f'{path}: no class')
    return ClassList(tuple(names), tuple(ids))
