"""Check a backbone's weights by eye: classify a video with the network's Kinetics-400 head.

    python data/check_weights.py VIDEO_OR_GIF --backbone i3d --weights i3d-kinetics-400.ckpt
    python data/check_weights.py cricket_flow.gif --backbone i3d --stream temporal --weights flow_imagenet.pt
    python data/check_weights.py my_video.mp4 --backbone s3d          # torchvision's weights

prints the top-5 Kinetics-400 classes (data/kinetics400_classes.txt) with their softmax
scores and logits. Weights that loaded but were mapped wrongly give features that look like
any others; a clip of a well-known action (DeepMind's `v_CricketShot_g04_c01` sample: "playing
cricket") shows at once whether the network still recognises it.

- i3d: the whole clip (the first --frames frames) in one pass, as the paper classifies: the last
  block average-pooled over 2 x 7 x 7, the 1x1x1 logits conv, the mean over time. A video is
  prepared as extract_features.py prepares it (short side 256, centre crop 224, [-1, 1]; flow
  computed with --flow); a GIF is taken to hold the network input as DeepMind's sample clips do:
  RGB as (x + 1) / 2, flow as (x, y, 0) + 0.5.
- torchvision backbones (s3d, r2plus1d_18, mvit_v2_s, swin3d_t): their own Kinetics-400 head on
  consecutive 16-frame clips with their weights' preprocessing; the logits averaged over clips.
"""
import argparse
import os
import sys

import numpy as np
import torch

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import operations  # noqa: E402
from data import clip_features  # noqa: E402
from data import extract_features as ef  # noqa: E402
from feature_files import CLIP_FRAMES  # noqa: E402

CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'kinetics400_classes.txt')


def kinetics_classes(path=CLASSES_FILE):
    with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != 400:
        raise ValueError(f'{path}: expected 400 class names, one a line, found {len(names)}')
    return names


def read_frames(path, limit):
    """The first `limit` frames of a video or GIF, RGB uint8 [N, H, W, 3]."""
    cv2 = ef.import_cv2()
    frames = []
    decoded = ef.decode(path)
    next(decoded)   # ('info', fps, claimed)
    for frame in decoded:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if len(frames) == limit:
            break
    decoded.close()
    if len(frames) < 2:
        raise ValueError(f'{path}: {len(frames)} frame(s) decoded; a clip needs at least 2')
    return np.stack(frames)


def i3d_input(frames, stream, size, flow, network_input):
    """I3D's input [1, C, T, h, w] in [-1, 1] from RGB frames (see the module's doc)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    if network_input:   # a GIF of the input itself
        x = x * 2 - 1 if stream == 'spatial' else x[:, :2] - 0.5
        return clip_features.centre_crop(x, size).transpose(0, 1)[None]
    cv2 = ef.import_cv2()
    transform = clip_features.frame_transform(cv2, 'i3d', size)
    resized = np.stack([transform(cv2.cvtColor(f, cv2.COLOR_RGB2BGR)) for f in frames])
    if stream == 'spatial':
        x = clip_features.make_rgb_prep('i3d', size, 'cpu')(resized)
    else:
        pair_flows = clip_features.opencv_pair_flows(cv2, ef.make_flow_fn(flow), None)
        x = clip_features.flow_to_input(pair_flows(resized[:-1], resized[1:]), size)
    return x.transpose(0, 1)[None]


def classify(path, backbone='i3d', stream='spatial', weights=None, size=None, flow='auto', max_frames=250,
             device='cpu'):
    """(Kinetics-400 logits [400], the number of frames used, whether a GIF was read as the input itself)."""
    if backbone not in clip_features.CLIP_BACKBONES:
        raise ValueError(f'--backbone {backbone}: a Kinetics-400 classifier exists for '
                         f'{sorted(clip_features.CLIP_BACKBONES)}')
    if stream not in clip_features.CLIP_BACKBONES[backbone][1]:
        raise ValueError(f'backbone {backbone} has an RGB stream only: use --stream spatial')
    size = size or ef.DEFAULT_SIZES[backbone]
    sources = ef.weight_sources(backbone, [stream], weights if stream == 'spatial' else None,
                                weights if stream == 'temporal' else None)
    state = ef.read_weights(backbone, stream, sources[stream][0])
    torchvision = None if backbone == 'i3d' else ef.import_torchvision(backbone)
    net = clip_features.build_clip_network(backbone, stream, state, sources[stream][0], torchvision,
                                           classifier=True).to(device)
    frames = read_frames(path, max_frames)
    network_input = backbone == 'i3d' and path.lower().endswith('.gif')
    with torch.inference_mode():
        if backbone == 'i3d':
            logits = net.classify(i3d_input(frames, stream, size, flow, network_input).to(device))
        else:
            video = clip_features.make_rgb_prep(backbone, size, device, torchvision)(frames)   # [T, C, h, w]
            starts = torch.arange(0, max(1, len(frames) - CLIP_FRAMES + 1), CLIP_FRAMES)
            index = (starts[:, None] + torch.arange(CLIP_FRAMES)).clamp(max=len(frames) - 1)
            logits = torch.cat([net(video[i].transpose(1, 2)) for i in index[:, None]])   # 16-frame clips
    return logits.mean(0).cpu(), len(frames), network_input


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('video', help='a video file, or a GIF holding the network input (DeepMind\'s samples)')
    parser.add_argument('--backbone', default='i3d', choices=sorted(clip_features.CLIP_BACKBONES))
    parser.add_argument('--stream', default='spatial', choices=['spatial', 'temporal'])
    parser.add_argument('--weights', default=None, help='the stream\'s weights file (any format extract_features '
                                                        'reads; default: torchvision\'s download)')
    parser.add_argument('--size', type=int, default=None, help='crop side (default: the backbone\'s)')
    parser.add_argument('--flow', default='auto', choices=['auto', 'tvl1', 'dis'], help='flow of a video (temporal)')
    parser.add_argument('--frames', type=int, default=250, help='classify the first N frames (default 250)')
    parser.add_argument('--top', type=int, default=5)
    parser.add_argument('--device', default='auto')
    args = parser.parse_args(argv)
    try:
        if not os.path.isfile(args.video):
            raise ValueError(f'no such video: {args.video}')
        names = kinetics_classes()
        device = operations.resolve_device(args.device)
        logits, used, network_input = classify(args.video, args.backbone, args.stream, args.weights, args.size,
                                               args.flow, args.frames, device)
    except (ValueError, ef.VideoError) as err:
        raise SystemExit(f'error: {err}') from None
    how = 'read as the network input' if network_input else 'prepared as for extraction'
    print(f'{args.video}: {used} frames ({how}), {args.backbone} {args.stream}, weights '
          f'{args.weights or "torchvision"}')
    scores = logits.softmax(0)
    print(f'top-{args.top} Kinetics-400 classes (softmax, logit):')
    for rank, i in enumerate(logits.argsort(descending=True)[:args.top].tolist(), 1):
        print(f'{rank:3d}. {names[i]:<40} {scores[i]:8.4f}  {logits[i]:8.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
