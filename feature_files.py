"""Feature files: their three layouts, and the sidecar JSON that says what a per-video file holds.

A feature folder holds one of three layouts (docs/method.md §2, §14), tried in this order:
  packed.npy      one [W, 128, D] array (float32 or float16), window i = row i; written by
                  data/pack_features.py from the per-window folder; memory-mappable.
  0.npy ...       one [128, D] file per window, window i = `<i>.npy` (the released layout).
  <video>.npy     one [T, D] file per video, one step per F frames (4 here; the field's JSON layout
                  any F); the window at start frame s reads steps s // F + offset + j, a short head
                  or tail repeating the end step.

    layout = feature_layout(folder)                                  # 'packed', 'window' or 'video'
    x = read_feature_folder(folder, starts, videos, indices, 128, np.float32)   # [len(indices), 128, D]

The sidecar `<video>.json` beside `<video>.npy` is written by data/extract_features.py:

    {"format": 1, "video": "v1", "stream": "spatial" | "temporal" | "concat",
     "steps": T, "fps": 30.0, "frame_num": 1800,
     "step_convention": "frame4" | "clip16",
     "settings": {"backbone": "i3d", "weights": {"file": "rgb_imagenet.pt", "sha256": "..."},
                  "flow": "tvl1", ...}}

Two things read it:
- the extractor: a rerun whose settings differ from the file's re-extracts the video instead of
  silently reusing features of another backbone, weight file or flow method;
- the per-video reader here: the step convention is the offset above, so clip features are read
  with the same offset whether they sit in the per-video folders or in the field's JSON layout
  (docs/method.md §15). A folder without sidecars (the release's, the field's I3D files) is read
  with the convention of its layout.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fileio import atomic_open

SIDECAR_FORMAT = 1
FRAMES_PER_STEP = 4    # every feature set extracted here has one step per 4 frames
CLIP_FRAMES = 16       # frames seen by one step of a clip backbone


def step_offset(frames_per_step, clip_frames):
    """The offset of a file whose step t sees frames F t .. F t + C - 1 (F = frames_per_step, C =
    clip_frames): the window at frame s reads file step s // F + offset + j for its j-th cell.

    The step is placed at its clip's centre, frame F t + C / 2 (ActionFormer's `s * fps / F - C / (2 F)`),
    and cell j of a window is read from the step centred on the cell's first frame: offset
    -C / (2 F). When that is not whole (C = F = 16: -0.5), the nearest step is taken and a tie
    goes to the later step, the one whose clip is centred inside the cell: floor(1/2 - C / (2 F)),
    at most half a step from the exact place. 4 and 16 give -2, 4 and 4 (one frame a step) 0."""
    return int(np.floor(0.5 - clip_frames / (2 * frames_per_step)))


# Step t of a file covers frames ...; the window at frame s reads file step s // 4 + offset + j.
STEP_CONVENTIONS = {
    'frame4': step_offset(FRAMES_PER_STEP, FRAMES_PER_STEP),   # 4t .. 4t+3: one frame (or flow stack), offset 0
    'clip16': step_offset(FRAMES_PER_STEP, CLIP_FRAMES),       # 4t .. 4t+15, centred on 4t+8: offset -2
}
PACKED_NAME = 'packed.npy'   # the packed layout's one file


# --- the sidecar ---

def sidecar_path(npy_path):
    return os.path.splitext(npy_path)[0] + '.json'


def write_sidecar(npy_path, doc):
    """Write the sidecar of `npy_path` atomically (after the .npy, so a sidecar always has its file)."""
    doc = dict(format=SIDECAR_FORMAT, **doc)
    if doc.get('step_convention') not in STEP_CONVENTIONS:
        raise ValueError(f'unknown step convention {doc.get("step_convention")!r}')
    with atomic_open(sidecar_path(npy_path)) as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write('\n')


def read_sidecar(npy_path):
    """The sidecar of `npy_path` as a dict, or None when there is none; ValueError naming it when unreadable."""
    path = sidecar_path(npy_path)
    try:
        with open(path, encoding='utf-8') as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f'{path}: not a readable feature sidecar ({err})') from None
    if not isinstance(doc, dict) or doc.get('step_convention') not in STEP_CONVENTIONS:
        raise ValueError(f'{path}: field step_convention must be one of {sorted(STEP_CONVENTIONS)}, '
                         f'got {doc.get("step_convention") if isinstance(doc, dict) else doc!r}')
    return doc


def file_step_offset(npy_path, layout_offset=None, frames_per_step=FRAMES_PER_STEP, layout=''):
    """The offset of `npy_path`'s steps (see STEP_CONVENTIONS).

    layout_offset None: a per-video folder, whose files may be of either convention (no sidecar: the
    release's frame4). An int: a layout that fixes the convention (the JSON layout: its
    frames_per_step and clip_frames, described by `layout`); a sidecar saying otherwise is an error,
    not a silent misalignment of every window."""
    doc = read_sidecar(npy_path)
    if doc is None:
        return 0 if layout_offset is None else layout_offset
    offset = STEP_CONVENTIONS[doc['step_convention']]
    if layout_offset is not None and (offset != layout_offset or frames_per_step != FRAMES_PER_STEP):
        raise ValueError(f'{sidecar_path(npy_path)}: step_convention {doc["step_convention"]!r} '
                         f'(backbone {doc.get("settings", {}).get("backbone", "?")}, steps of {FRAMES_PER_STEP} '
                         f'frames) does not fit this layout, {layout or "another convention"}; use the per-video '
                         f'folders, or the settings frames_per_step and clip_frames of these features')
    return offset


# --- one file ---

def load_npy(path, mmap=False):
    """The array of a .npy file (memory-mapped, read-only, with mmap=True); ValueError naming the file."""
    try:
        a = np.load(path, allow_pickle=False, mmap_mode='r' if mmap else None)
    except FileNotFoundError:
        raise ValueError(f'{path}: feature file not found') from None
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f'{path}: cannot read as .npy: {err}') from None
    if not isinstance(a, np.ndarray):   # an .npz archive under a .npy name
        raise ValueError(f'{path}: an .npz archive, not a .npy array; save one array per file with np.save')
    return a


def check_feature_array(a, path, shape=None):
    """Features must be floating point; `shape` (None entries = any) or else [W, steps, D]."""
    if a.dtype.kind != 'f':
        raise ValueError(f'{path}: features must be floating point, got dtype {a.dtype}')
    if shape is None:
        if a.ndim != 3:
            raise ValueError(f'{path}: expected a [W, 128, D] array, got shape {list(a.shape)}')
    elif a.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, a.shape)):
        want = ', '.join('?' if n is None else str(n) for n in shape)
        raise ValueError(f'{path}: expected shape [{want}], got {list(a.shape)}')


def check_finite(a, path, what='entry', numbers=None, chunk=64):
    """ValueError naming `path` and the first entry (window or step) of `a` holding NaN or inf.

    Run it on the array as the network will read it (after any cast): a float64 value beyond
    float16 / float32 range is finite in the file and inf in memory. numbers[i] is the
    number to report for entry i (default i)."""
    # In chunks: a whole-array isfinite on several GB would double the memory.
    for i in range(0, len(a), chunk):
        part = np.asarray(a[i:i + chunk])
        ok = np.isfinite(part).reshape(len(part), -1).all(1)
        if not ok.all():
            j = i + int(np.flatnonzero(~ok)[0])
            raise ValueError(f'{path}: NaN or inf in {what} {j if numbers is None else numbers[j]}'
                             f' (as {part.dtype}); fix or regenerate the features')


# --- the three layouts ---

def feature_layout(folder):
    """Which layout a feature folder holds: 'packed', 'window' or 'video' (ValueError if none)."""
    if os.path.isfile(os.path.join(folder, PACKED_NAME)):
        return 'packed'
    if os.path.isfile(os.path.join(folder, '0.npy')):
        return 'window'
    if os.path.isdir(folder) and any(n.endswith('.npy') for n in os.listdir(folder)):
        return 'video'
    raise ValueError(f'{folder}: no features found (expected {PACKED_NAME}, 0.npy ... or <video>.npy)')


def read_feature_folder(folder, starts, videos, indices, steps, dtype, mmap=False):
    """[len(indices), steps, D] features of the windows `indices` of the window list (starts,
    videos) from `folder`, in whichever layout it holds (feature_layout), cast to `dtype`.

    With mmap=True a packed array of the right dtype is returned memory-mapped (read-only)
    instead of read. NaN or inf in what the network would read (after the cast) is an error
    naming the file."""
    layout = feature_layout(folder)
    if layout == 'packed':
        return read_packed_file(folder, len(starts), indices, steps, dtype, mmap)
    if layout == 'window':
        return read_window_files(folder, len(starts), indices, steps, dtype)
    return read_video_files(folder, starts, videos, indices, steps, dtype)


def read_packed_file(folder, w, indices, steps, dtype, mmap):
    """The rows `indices` of `folder`/packed.npy, which must hold the `w` windows of the window list."""
    path = os.path.join(folder, PACKED_NAME)
    packed = load_npy(path, mmap=True)
    check_feature_array(packed, path)
    if packed.shape[0] != w or packed.shape[1] != steps:
        raise ValueError(f'{path}: shape {list(packed.shape)} does not fit the window list '
                         f'({w} windows of {steps} steps); repack it for this window list')
    if mmap and packed.dtype == dtype and np.array_equal(indices, np.arange(w)):
        check_finite(packed, path, 'window')
        return packed
    out = np.empty((len(indices), steps, packed.shape[2]), dtype)
    for i in range(0, len(indices), 256):   # sequential reads of a few hundred MB at a time
        out[i:i + 256] = packed[indices[i:i + 256]]
    check_finite(out, path, 'window', indices)
    return out


def read_window_files(folder, w, indices, steps, dtype):
    """The files `<i>.npy` of `indices`; a folder holding more windows than the list's `w` is an error."""
    beyond = os.path.join(folder, f'{w}.npy')
    if os.path.exists(beyond):
        raise ValueError(f'{beyond}: the folder holds more windows than the window list ({w}); '
                         f'features and window list do not belong together')
    out, dim = None, None
    for j, i in enumerate(indices):
        path = os.path.join(folder, f'{i}.npy')
        a = load_npy(path)
        check_feature_array(a, path, (steps, dim))
        if out is None:
            dim = a.shape[1]
            out = np.empty((len(indices), steps, dim), dtype)
        out[j] = a
        check_finite(out[j], path, 'step')
    return out if out is not None else np.zeros((0, steps, 0), dtype)


def read_video_files(folder, starts, videos, indices, steps, dtype, step_offset=None, channels=None,
                     frames_per_step=FRAMES_PER_STEP, layout=''):
    """Per-video files: slice each video once for all of its windows, several videos at a
    time (numpy copies without holding the GIL; the reads are what takes the time).

    The window at frame s reads steps s // F + offset + j (j < steps, F = frames_per_step), cut
    to the file's steps (repeating the first or the last); the offset is the file's step
    convention (file_step_offset: from its sidecar, else `step_offset`, else 0; `layout`
    describes a fixed one). `channels` (index array) picks columns of each step."""
    sel_videos = videos[indices]
    names = np.unique(sel_videos)
    if len(names) == 0:
        return np.zeros((0, steps, 0), dtype)
    first_path = os.path.join(folder, f'{names[0]}.npy')
    first_array = load_npy(first_path, mmap=True)
    check_feature_array(first_array, first_path, (None, None))
    dim = first_array.shape[1]
    out = np.empty((len(indices), steps, dim if channels is None else len(channels)), dtype)

    def fill(video):
        path = os.path.join(folder, f'{video}.npy')
        a = load_npy(path, mmap=True)
        check_feature_array(a, path, (None, dim))
        if len(a) == 0:
            raise ValueError(f'{path}: no feature steps')
        rows = np.flatnonzero(sel_videos == video)
        first = starts[indices[rows]] // frames_per_step + file_step_offset(path, step_offset, frames_per_step, layout)
        late = first >= len(a)
        if late.any():
            r = rows[np.flatnonzero(late)[0]]
            raise ValueError(f'{path}: window {indices[r]} starts at frame {starts[indices[r]]}, '
                             f'past the {len(a)} feature steps of the video')
        step = np.clip(first[:, None] + np.arange(steps), 0, len(a) - 1)   # short tail: repeat the last step
        lo = int(step.min())
        block = a[lo:step.max() + 1]
        block = np.asarray(block if channels is None else block[:, channels]).astype(dtype, copy=False)
        check_finite(block, path, 'step', np.arange(lo, lo + len(block)))
        out[rows] = block[step - lo]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done in [pool.submit(fill, video) for video in names]:
            done.result()   # the first bad file in video order raises
    return out
