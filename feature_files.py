"""What a feature file says about itself: `<video>.json` beside `<video>.npy`.

data/extract_features.py writes one beside every feature file it makes:

    {"format": 1, "video": "v1", "stream": "spatial" | "temporal" | "concat",
     "steps": T, "fps": 30.0, "frame_num": 1800,
     "step_convention": "frame4" | "clip16",
     "settings": {"backbone": "i3d", "weights": {"file": "rgb_imagenet.pt", "sha256": "..."},
                  "flow": "tvl1", ...}}

Two things read it:
- the extractor: a rerun whose settings differ from the file's re-extracts the video instead of
  silently reusing features of another backbone, weight file or flow method;
- load_data: the step convention says which feature step a window's step j is paired with, so
  clip features are read with the same offset whether they sit in the per-video folders or in
  the I3D layout (docs/method.md §15). A folder without sidecars (the release's, the field's
  I3D files) is read with the convention of its layout.
"""
import json
import os

from fileio import atomic_open

FORMAT = 1
FRAMES_PER_STEP = 4    # every feature set here has one step per 4 frames, the network's step
CLIP_FRAMES = 16       # frames seen by one step of a clip backbone

# Step t of a file covers frames ...; the window at frame s reads file step s // 4 + offset + j.
STEP_CONVENTIONS = {
    'frame4': 0,   # 4t .. 4t+3: one frame (or flow stack) at its centre, as the release's features
    'clip16': -(CLIP_FRAMES // 2 // FRAMES_PER_STEP),   # 4t .. 4t+15, centred on 4t+8: offset -2
}


def sidecar_path(npy_path):
    return os.path.splitext(npy_path)[0] + '.json'


def write_sidecar(npy_path, doc):
    """Write the sidecar of `npy_path` atomically (after the .npy, so a sidecar always has its file)."""
    doc = dict(format=FORMAT, **doc)
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


def step_offset(npy_path, layout_offset=None):
    """The offset of `npy_path`'s steps (see STEP_CONVENTIONS).

    layout_offset None: a per-video folder, whose files may be of either convention (no sidecar: the
    release's frame4). An int: a layout that fixes the convention (the I3D layout: clip16); a sidecar
    saying otherwise is an error, not a silent misalignment of every window."""
    doc = read_sidecar(npy_path)
    if doc is None:
        return 0 if layout_offset is None else layout_offset
    offset = STEP_CONVENTIONS[doc['step_convention']]
    if layout_offset is not None and offset != layout_offset:
        raise ValueError(f'{sidecar_path(npy_path)}: step_convention {doc["step_convention"]!r} '
                         f'(backbone {doc.get("settings", {}).get("backbone", "?")}) cannot be read in this '
                         f'layout, whose steps are 16-frame clips; use the per-video folders instead')
    return offset
