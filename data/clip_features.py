"""Clip features for one's own videos: a 16-frame clip per 4-frame step through a 3-D video network.

Step t is the clip of frames 4t .. 4t+15 (feature_files's 'clip16', the convention of the field's
THUMOS14 I3D features), so the I3D-layout reader and the per-video reader pair these files with a
window's steps exactly as they pair the field's files. A video of n frames has
T = (n - 16) // 4 + 1 steps (at least one: a shorter video's clip repeats its last frame), and the
temporal stream's clip t stacks the flow fields (k -> k+1) for k = 4t .. 4t+15, the last one
repeated at the video's end.

Backbones (CLIP_BACKBONES; D is the feature width):
- i3d (1024 per stream): the two-stream Inception-I3D of data/inception_i3d.py with the public
  `rgb_imagenet.pt` / `flow_imagenet.pt` weights. Frames resized so the short side is 256 and
  centre-cropped to 224; RGB scaled to [-1, 1]; flow (TV-L1 by default) computed on the resized
  grey frames, clipped to +-20 pixels and scaled to [-1, 1], then cropped like the RGB.
- s3d (1024), r2plus1d_18 (512), mvit_v2_s (768), swin3d_t (768): torchvision's Kinetics-400
  networks, RGB only, penultimate layer (the classifier removed), each with the preprocessing its
  weights document (resize, centre crop, mean / std: `weights.transforms()`).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data import inception_i3d
from feature_files import CLIP_FRAMES, FRAMES_PER_STEP

# name: (feature width per stream, streams, torchvision builder, its weights enum, the head to remove)
CLIP_BACKBONES = {
    'i3d': (inception_i3d.FEATURE_DIM, ('spatial', 'temporal'), None, None, None),
    's3d': (1024, ('spatial',), 's3d', 'S3D_Weights', 'classifier'),
    'r2plus1d_18': (512, ('spatial',), 'r2plus1d_18', 'R2Plus1D_18_Weights', 'fc'),
    'mvit_v2_s': (768, ('spatial',), 'mvit_v2_s', 'MViT_V2_S_Weights', 'head'),
    'swin3d_t': (768, ('spatial',), 'swin3d_t', 'Swin3D_T_Weights', 'head'),
}
I3D_RESIZE, I3D_CROP = 256, 224
FLOW_BOUND = 20.0   # pixels: flow is clipped to +-20 and scaled to [-1, 1] (TSN, I3D)


def num_clips(frame_num):
    return max(1, (frame_num - CLIP_FRAMES) // FRAMES_PER_STEP + 1)


def clip_frame_index(steps, last):
    """[len(steps), 16] frame (or flow-pair) indices of clips `steps`, clamped to `last`."""
    idx = FRAMES_PER_STEP * torch.as_tensor(steps)[:, None] + torch.arange(CLIP_FRAMES)
    return idx.clamp_(max=last)


# ---------------------------------------------------------------- networks

def torchvision_weights(torchvision, backbone):
    """The Kinetics-400 weights enum of a torchvision video backbone (its transforms need no download)."""
    return getattr(torchvision.models.video, CLIP_BACKBONES[backbone][3]).DEFAULT


def build_clip_network(backbone, stream, state_dict, source, torchvision=None, classifier=False):
    """A clip network [B, C, 16, h, w] -> [B, D] in eval mode; state_dict None keeps the seeded random init.
    classifier: keep a torchvision network's Kinetics-400 head ([B, 400] logits; I3D has `classify`)."""
    if backbone == 'i3d':
        net = inception_i3d.InceptionI3d(inception_i3d.IN_CHANNELS[stream])
        if state_dict is not None:
            inception_i3d.load_i3d_weights(net, state_dict, source)
        return net.eval()
    _, _, builder, _, head = CLIP_BACKBONES[backbone]
    net = getattr(torchvision.models.video, builder)(weights=None)
    if state_dict is not None:
        try:
            net.load_state_dict(state_dict)   # strict, classifier included: the file is the whole network
        except RuntimeError as err:
            raise ValueError(f'weights {source} do not fit torchvision {builder}: {err}') from None
    if not classifier:
        setattr(net, head, nn.Identity())   # penultimate features; s3d then averages over time and space itself
    return net.eval()


# ---------------------------------------------------------------- preprocessing

def resize_short_side(cv2, frame, short):
    h, w = frame.shape[:2]
    s = short / min(h, w)
    size = (max(short, round(w * s)), max(short, round(h * s)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def centre_crop(x, size):
    """Centre crop of the last two dimensions."""
    h, w = x.shape[-2:]
    y0, x0 = (h - size) // 2, (w - size) // 2
    return x[..., y0:y0 + size, x0:x0 + size]


def make_rgb_prep(backbone, size, device, torchvision=None):
    """frames uint8 [N, H, W, 3] (RGB; for i3d already resized, short side 256) -> float [N, 3, h, w]."""
    if backbone == 'i3d':
        def prep(frames):
            x = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float()
            return centre_crop(x, size).div_(127.5).sub_(1.0)
        return prep
    transform = torchvision_weights(torchvision, backbone).transforms()

    def prep(frames):   # the transform takes a video [T, C, H, W] and returns [C, T, h, w]
        return transform(torch.from_numpy(frames).to(device).permute(0, 3, 1, 2)).transpose(0, 1)
    return prep


def flow_to_input(flow, size):
    """Flow in pixels [N, 2, H, W] -> I3D's input: clipped to +-20, scaled to [-1, 1], centre crop."""
    return centre_crop(flow.clamp(-FLOW_BOUND, FLOW_BOUND) / FLOW_BOUND, size)


def opencv_pair_flows(cv2, flow_fn, pool):
    """flows(a, b) for frames uint8 [N, H, W, 3] -> float32 [N, 2, H, W] (pixels), pairs on the thread pool."""
    def flows(a, b):
        ga = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in a]
        gb = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in b]
        out = list((pool.map if pool else map)(flow_fn, ga, gb))
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).astype(np.float32))
    flows.method = flow_fn.method
    return flows


class RaftFlow:
    """RAFT (torchvision, large) on batches of frame pairs, on the extraction device."""
    method = 'raft'

    def __init__(self, torchvision, state_dict, device, updates=12):
        from torchvision.models import optical_flow
        self.net = optical_flow.raft_large(weights=None)
        if state_dict is not None:
            try:
                self.net.load_state_dict(state_dict)
            except RuntimeError as err:
                raise ValueError(f'--flow-weights do not fit torchvision raft_large: {err}') from None
        self.net = self.net.eval().to(device)
        self.transform = optical_flow.Raft_Large_Weights.DEFAULT.transforms()
        self.device, self.updates = device, updates

    def __call__(self, a, b):
        a, b = (torch.from_numpy(f).to(self.device).permute(0, 3, 1, 2) for f in (a, b))
        a, b = self.transform(a, b)   # uint8 -> float in [-1, 1]
        h, w = a.shape[-2:]
        # RAFT needs sides divisible by 8 and at least 128 (its correlation pyramid divides by 64 more).
        pad = (0, max(128, w + -w % 8) - w, 0, max(128, h + -h % 8) - h)
        a, b = F.pad(a, pad, mode='replicate'), F.pad(b, pad, mode='replicate')
        with torch.inference_mode():
            flow = self.net(a, b, num_flow_updates=self.updates)[-1]
        return flow[..., :h, :w].float().cpu()


# ---------------------------------------------------------------- clips of a video

def frame_transform(cv2, backbone, size):
    """Per decoded frame (BGR): RGB, and for i3d resized so the short side is 256 (for a 224 crop)."""
    short = round(I3D_RESIZE * size / I3D_CROP)

    def transform(frame):
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        return resize_short_side(cv2, rgb, short) if backbone == 'i3d' else rgb
    return transform


class ClipBuffer:
    """The prepared frames (spatial) or flow fields (temporal) still needed by clips not yet emitted."""

    def __init__(self):
        self.data, self.base = None, 0   # data[i] is frame (or flow pair) base + i

    def append(self, x):
        self.data = x if self.data is None else torch.cat([self.data, x])

    def clips(self, steps, last):
        """[len(steps), C, 16, h, w] of clips `steps`, indices clamped to `last`."""
        return self.data[clip_frame_index(steps, last) - self.base].permute(0, 2, 1, 3, 4)

    def drop_before(self, index):
        self.data, self.base = self.data[index - self.base:], index


def clip_batches(frames, streams, rgb_prep, pair_flows, size, clips_per_batch):
    """Yield {stream: float [b, C, 16, h, w]} for consecutive clips t = 0, 1, ..., then ('end', n).

    frames: an iterable of uint8 RGB frames (frame_transform's). They are prepared a chunk at a
    time (one flow batch, one transform call) and dropped once no later clip needs them, so memory
    stays a few chunks whatever the video's length."""
    chunk = FRAMES_PER_STEP * clips_per_batch
    buffers = {s: ClipBuffer() for s in streams}
    pending, prev, added, t = [], None, 0, 0

    def add(block):
        nonlocal prev
        arr = np.stack(block)
        if 'spatial' in buffers:
            buffers['spatial'].append(rgb_prep(arr))
        if 'temporal' in buffers:
            a = arr[:-1] if prev is None else np.concatenate([prev[None], arr[:-1]])
            b = arr[1:] if prev is None else arr
            if len(a):
                buffers['temporal'].append(flow_to_input(pair_flows(a, b), size))
        prev = arr[-1]
        return len(block)

    def emit(stop, last_frame):
        nonlocal t
        while t < stop:
            steps = torch.arange(t, min(stop, t + clips_per_batch))
            yield {s: buf.clips(steps, last_frame - (s == 'temporal')) for s, buf in buffers.items()}
            t = int(steps[-1]) + 1
            for buf in buffers.values():
                buf.drop_before(FRAMES_PER_STEP * t)

    margin = 1 if 'temporal' in buffers else 0   # clip t's last flow pair needs frame 4t + 16
    for frame in frames:
        pending.append(frame)
        if len(pending) == chunk:
            added += add(pending)
            pending = []
            yield from emit((added - CLIP_FRAMES - margin) // FRAMES_PER_STEP + 1, added)
    if pending:
        added += add(pending)
    if added < 1 + margin:
        raise ValueError(f'{added} frame(s) decoded; the {"flow" if margin else "RGB"} stream needs {1 + margin}')
    yield from emit(num_clips(added), added - 1)
    yield 'end', added


def extract_clips(frames, nets, rgb_prep, pair_flows, size, clips_per_batch, device):
    """Features {stream: float32 [T, D]} of one video's frames, and its frame count."""
    feats = {s: [] for s in nets}
    for batch in clip_batches(frames, list(nets), rgb_prep, pair_flows, size, clips_per_batch):
        if isinstance(batch, tuple):   # ('end', n)
            frame_num = batch[1]
            break
        with torch.inference_mode():
            for s, x in batch.items():
                feats[s].append(nets[s](x.to(device)).float().cpu().numpy())
    out = {s: np.concatenate(f).astype(np.float32) for s, f in feats.items()}
    for s, f in out.items():
        if len(f) != num_clips(frame_num):
            raise RuntimeError(f'{s}: {len(f)} clips for {frame_num} frames, expected {num_clips(frame_num)}')
    return out, frame_num
